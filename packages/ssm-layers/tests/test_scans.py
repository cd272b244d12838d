"""Scan orders (layers/scans.py): causality, the reversal symmetry, the 2-D reach, the layer contract."""
from __future__ import annotations

import pytest
import torch
from advssm.ssm_layers import LAYERS, ModelConfig, build_model
from advssm.ssm_layers.layers.scans import SCANS, Bidirectional, Cross2D, ScanLayer, wrap_scan
from advssm.ssm_layers.model import _make_layer
from advssm.ssm_layers.transforms import register_transform

TINY = dict(d_model=8, d_state=4, n_layers=1)
TINY_OPTIONS = {"mamba2": {"head_dim": 4, "chunk_size": 4}}  # its default head_dim 64 does not fit d_model 8


def tiny_config(layer: str, **kw) -> ModelConfig:
    return ModelConfig(layer=layer, layer_options=TINY_OPTIONS.get(layer, {}), **{**TINY, **kw})


def last_tokens(model, x):
    """The last block's output tokens (B, L, d_model)."""
    return model.forward_trace(x)[f"blocks.{len(model.blocks) - 1}.norm"]


def test_every_zoo_layer_says_it_is_causal_and_the_wrappers_say_they_are_not():
    for name, cls in LAYERS.items():
        assert cls.is_causal is True, name
    assert Bidirectional.is_causal is False and Cross2D.is_causal is False


@pytest.mark.parametrize("layer", list(LAYERS))
def test_a_causal_models_first_token_never_depends_on_later_tokens_and_a_bidirectional_ones_does(layer):
    torch.manual_seed(0)
    x = torch.rand(2, 12, 1, dtype=torch.float64)
    later = x.clone()
    later[:, 1:] = torch.rand(2, 11, 1, dtype=torch.float64)
    for scan, depends in (("causal", False), ("bidirectional", True)):
        torch.manual_seed(1)
        model = build_model(tiny_config(layer, n_layers=2, scan=scan)).double().eval()
        first = [last_tokens(model, v)[:, 0] for v in (x, later)]
        change = float((first[0] - first[1]).abs().max().detach())
        # an FFT convolution leaves float64 round-off (~1e-16) of later tokens in earlier outputs
        assert (change > 1e-6) if depends else (change < 1e-12), (layer, scan, change)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_with_cross2d_every_token_depends_on_every_patch(layer):
    torch.manual_seed(0)
    model = build_model(tiny_config(layer, d_input=2, patch_size=2, scan="cross2d")).double().eval()
    x = torch.rand(1, 2, 6, 8, dtype=torch.float64, requires_grad=True)   # a 3 x 4 patch grid
    out = last_tokens(model, x)
    assert out.shape[1] == 12
    readout = torch.randn(8, dtype=torch.float64)
    for token in range(12):
        # a random readout: the plain sum of a LayerNorm's outputs has no gradient at its init
        (grad,) = torch.autograd.grad(out[0, token] @ readout, x, retain_graph=True)
        per_patch = grad[0].abs().sum(0).reshape(3, 2, 4, 2).sum((1, 3))   # (3, 4) patch grid
        assert (per_patch > 0).all(), (layer, token, per_patch)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_reversing_the_input_and_swapping_the_directions_reverses_a_bidirectional_layers_output(layer):
    torch.manual_seed(0)
    config = tiny_config(layer)
    wrapper = Bidirectional(lambda: _make_layer(config)).double().eval()
    swapped = Bidirectional(lambda: _make_layer(config)).double().eval()
    swapped.directions[0].load_state_dict(wrapper.directions[1].state_dict())
    swapped.directions[1].load_state_dict(wrapper.directions[0].state_dict())
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    expected = wrapper(x).flip(1)
    torch.testing.assert_close(swapped(x.flip(1)), expected, rtol=1e-12, atol=1e-12)


def test_cross2d_reads_the_four_ss2d_orders_and_keeps_the_class_token_last():
    layer = Cross2D(lambda: _make_layer(tiny_config("s4d")))
    orders = [o.tolist() if o is not None else list(range(7)) for o in layer.orders(7, (2, 3), "cpu")]
    assert orders == [[0, 1, 2, 3, 4, 5, 6],      # row-major
                      [0, 3, 1, 4, 2, 5, 6],      # column-major
                      [5, 4, 3, 2, 1, 0, 6],      # row-major reversed
                      [5, 2, 4, 1, 3, 0, 6]]      # column-major reversed
    bidi = Bidirectional(lambda: _make_layer(tiny_config("s4d")))
    assert bidi.orders(5, (2, 2), "cpu")[1].tolist() == [3, 2, 1, 0, 4]
    assert bidi.orders(4, None, "cpu")[1].tolist() == [3, 2, 1, 0]


def test_cross2d_without_a_grid_and_on_sequences_is_a_clear_error():
    layer = Cross2D(lambda: _make_layer(tiny_config("s4d")))
    with pytest.raises(ValueError, match="needs the token grid"):
        layer(torch.rand(1, 4, 8))
    with pytest.raises(ValueError, match="2x3 token grid needs at least 6 tokens"):
        layer(torch.rand(1, 4, 8), grid=(2, 3))
    model = build_model(tiny_config("s4d", scan="cross2d"))
    with pytest.raises(ValueError, match="needs images"):
        model(torch.rand(2, 16, 1))
    with pytest.raises(ValueError, match="unknown scan 'diagonal'"):
        tiny_config("s4d", scan="diagonal")
    with pytest.raises(ValueError, match="unknown scan"):
        wrap_scan("zigzag", lambda: _make_layer(tiny_config("s4d")))


@pytest.mark.parametrize("scan", SCANS[1:])
def test_forward_trace_keeps_its_keys_and_the_layer_contract(scan):
    torch.manual_seed(0)
    x = torch.rand(2, 1, 4, 4)
    causal = build_model(tiny_config("s6", n_layers=2)).eval()
    model = build_model(tiny_config("s6", n_layers=2, scan=scan)).eval()
    trace = model.forward_trace(x)
    assert list(trace) == list(causal.forward_trace(x))
    layer = model.blocks[0].layer
    assert isinstance(layer, ScanLayer) and trace["blocks.0.mix"].shape == (2, 16, layer.transform_dim)
    assert layer.transform_dim == layer.n_directions * 16        # S6's d_inner, once per direction
    torch.testing.assert_close(trace["logits"], model(x))        # the trace computes what forward computes


class Doubling(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, y):
        assert y.shape[-1] == self.dim
        return 2 * y


def test_an_output_transform_gets_one_module_per_direction():
    register_transform("test-doubling", Doubling)
    torch.manual_seed(0)
    config = tiny_config("s6", scan="cross2d")
    model = build_model(config).eval()
    x = torch.rand(2, 1, 4, 4)
    plain = model.forward_trace(x)
    model.set_transform("test-doubling")
    slot = model.blocks[0].layer.output_transform
    assert len(slot.parts) == 4 and all(part.dim == 16 for part in slot.parts)
    torch.testing.assert_close(model.forward_trace(x)["blocks.0.transform"], 2 * plain["blocks.0.mix"])


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_every_layer_and_scan_builds_and_runs_forward_and_backward(layer, scan):
    torch.manual_seed(0)
    model = build_model(tiny_config(layer, d_input=3, patch_size=2, scan=scan, cls_token=True, pos_embed=True,
                                    image_size=4))
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    logits = model(x)
    logits.sum().backward()
    assert logits.shape == (2, 10) and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_selective_internals_come_back_in_token_order_per_direction():
    torch.manual_seed(0)
    config = tiny_config("mamba2")
    wrapper = Bidirectional(lambda: _make_layer(config))
    assert wrapper.is_selective
    x = torch.randn(2, 6, 8)
    internals = wrapper.selective_internals(x)
    forward = wrapper.directions[0].selective_internals(x)
    backward = wrapper.directions[1].selective_internals(x.flip(1))
    torch.testing.assert_close(internals["delta"], torch.cat([forward["delta"], backward["delta"].flip(1)], -1))
    torch.testing.assert_close(internals["state_energy"],
                               forward["state_energy"] + backward["state_energy"].flip(1))
