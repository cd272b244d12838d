"""Precision a user meets: models cast to fp16 / bf16 / float64, autocast regions, long sequences.

SSM kernels and recurrences run in fp32 (or better) whatever the module dtype, so a half-precision
model stays close to its float64 twin; every layer returns its input's dtype.
"""
from __future__ import annotations

import pytest
import torch
from advssm.ssm_layers import LAYERS, ModelConfig, build_model

SMALL = dict(d_model=16, d_state=8, n_layers=2, n_classes=3)


def _pair(layer: str, seed: int = 0):
    """A float64 model and a float32 copy with the same weights."""
    torch.manual_seed(seed)
    model64 = build_model(ModelConfig(layer=layer, **SMALL)).double().eval()
    model = build_model(ModelConfig(layer=layer, **SMALL)).eval()
    model.load_state_dict(model64.state_dict())
    return model, model64


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_half_precision_model_tracks_float64(layer, dtype, tol):
    model, model64 = _pair(layer)
    x = torch.rand(2, 1, 6, 6)
    logits = model.to(dtype)(x.to(dtype))
    assert logits.dtype == dtype
    logits.float().logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    reference = model64(x.double())
    assert (logits.double() - reference).abs().max() <= tol * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_autocast_forward_and_backward(layer):
    model, model64 = _pair(layer, seed=1)
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    logits.float().logsumexp(-1).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    reference = model64(x.detach().double())
    assert (logits.double() - reference).abs().max() <= 6e-2 * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_autocast_layer_on_an_fp32_residual_stream(layer):
    """A layer's input can be fp32 inside autocast (after a LayerNorm: the prenorm presets): Mega's gated
    residual mixed bf16 and fp32 in one lerp and failed on every bf16 step of the paper's Mega (seen on a GPU)."""
    torch.manual_seed(3)
    block = LAYERS[layer](16)
    x = torch.rand(2, 7, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    y.float().square().sum().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()
    model = build_model(ModelConfig(layer=layer, prenorm=True, **SMALL))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.rand(2, 1, 6, 6))
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_double_model_takes_float_inputs(layer):
    _, model64 = _pair(layer, seed=2)
    x = torch.rand(2, 1, 5, 5, requires_grad=True)
    logits = model64(x)
    assert logits.dtype == torch.float64
    logits.sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    torch.testing.assert_close(logits, model64(x.detach().double()), rtol=0, atol=0)


@pytest.mark.parametrize("layer", ["s4", "s4d", "dss", "s5", "s6", "mega"])
def test_long_sequence_float32_tracks_float64(layer):
    """8192 steps (twice Tiny-ImageNet's 4096): the fp32 layer stays within 1e-4 of its float64 twin."""
    torch.manual_seed(3)
    cls = LAYERS[layer]
    kwargs = {"d_state": 8} | ({"ema": "scan"} if layer == "mega" else {})
    fast, exact = cls(4, **kwargs), cls(4, **kwargs).double()
    exact.load_state_dict(fast.state_dict())
    x = torch.randn(1, 8192, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mixed, reference = fast.mix(x), exact.mix(x.double())
    assert torch.isfinite(mixed).all()
    assert (mixed.double() - reference).abs().max() <= 1e-4 * reference.abs().max()
