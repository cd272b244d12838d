"""Mamba2 against the real peer (transformers' Mamba2Mixer), S6 against MambaMixer, and the layer contract.

transformers' torch path computes A = -exp(A_log), the Mamba-2 scan and the gated RMSNorm in float32 even for
a float64 module, so the two float64 layers agree to float32 rounding (measured below 1e-6 of the output's
scale); our own float64 paths agree with each other to 1e-10. transformers is in the ssm-layers test
extra, so every session that runs these tests has it: they never skip.
"""
from __future__ import annotations

import pytest
import torch
from advssm.ssm_layers import ModelConfig, build_model, load_checkpoint, save_checkpoint
from advssm.ssm_layers.layers import LAYERS, S6, Mamba2
from advssm.ssm_layers.ops import SSD, ssd_reference
from transformers import Mamba2Config, MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

# |ours - theirs| <= PEER_TOL * max|theirs|: float32 rounding inside transformers' float64 module
PEER_TOL = 1e-5


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random, non-default weights (A_log, D, dt_bias, norm weight too), so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _mamba2_pair(d_model, head_dim, n_groups, d_state, chunk, seed=0, expand=2, d_conv=4):
    config = Mamba2Config(hidden_size=d_model, num_heads=expand * d_model // head_dim, head_dim=head_dim,
                          n_groups=n_groups, state_size=d_state, chunk_size=chunk, expand=expand,
                          conv_kernel=d_conv, num_hidden_layers=1, vocab_size=8)
    torch.manual_seed(seed)
    theirs = _perturbed(Mamba2Mixer(config, layer_idx=0).double().eval(), seed)
    ours = Mamba2(d_model, d_state=d_state, head_dim=head_dim, n_groups=n_groups, d_conv=d_conv, expand=expand,
                  chunk_size=chunk).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = PEER_TOL) -> None:
    err, scale = (ours - theirs).abs().max().item(), theirs.abs().max().item()
    assert err <= tol * scale, f"max error {err:.3g} > {tol:g} x scale {scale:.3g}"


def _outputs_and_grads(layer, x, cotangent):
    x = x.clone().requires_grad_(True)
    out = layer(x)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], cotangent)
    return out.detach(), grads[0], dict(zip([n for n, _ in layer.named_parameters()], grads[1:]))


@pytest.mark.parametrize("d_model, head_dim, n_groups, d_state, chunk, L", [
    (32, 16, 1, 8, 8, 21),    # 4 heads, one group, L not a multiple of the chunk
    (32, 8, 2, 6, 4, 13),     # 8 heads in 2 groups, small chunks
    (24, 12, 4, 5, 16, 7),    # 4 heads, one per group, one partial chunk
    (16, 32, 1, 4, 256, 1),   # one head, L = 1
    (48, 16, 3, 8, 5, 40),    # 6 heads in 3 groups, 8 chunks
])
def test_mamba2_matches_transformers_mixer(d_model, head_dim, n_groups, d_state, chunk, L):
    ours, theirs = _mamba2_pair(d_model, head_dim, n_groups, d_state, chunk)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, L, d_model, generator=g, dtype=torch.float64)
    cot = torch.randn(3, L, d_model, generator=g, dtype=torch.float64)
    y_ours, gx_ours, gp_ours = _outputs_and_grads(ours, x, cot)
    y_theirs, gx_theirs, gp_theirs = _outputs_and_grads(theirs, x, cot)
    _assert_close(y_ours, y_theirs)
    _assert_close(gx_ours, gx_theirs)
    assert gp_ours.keys() == gp_theirs.keys()
    for name in gp_ours:
        _assert_close(gp_ours[name], gp_theirs[name], tol=1e-4)  # sums over the batch and sequence


def test_mamba2_state_dict_is_the_peers():
    """Names and shapes of transformers' Mamba2Mixer (= mamba_ssm's Mamba2), in both directions."""
    ours, theirs = _mamba2_pair(64, 32, 2, 16, 64)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes
    assert set(shapes) == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                           "norm.weight", "out_proj.weight"}
    theirs.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("d_conv, dt_rank", [(4, "auto"), (3, 5)])
def test_s6_matches_transformers_mamba_mixer(d_conv, dt_rank):
    """Our S6 keeps mamba_ssm's names: MambaMixer's weights load unchanged and give the same outputs."""
    d_model = 24
    config = MambaConfig(hidden_size=d_model, state_size=8, expand=2, conv_kernel=d_conv, num_hidden_layers=1,
                         vocab_size=8, time_step_rank=dt_rank)
    torch.manual_seed(0)
    theirs = _perturbed(MambaMixer(config, layer_idx=0).double().eval(), 0)
    ours = S6(d_model, d_state=8, d_conv=d_conv, dt_rank=dt_rank).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 17, d_model, generator=g, dtype=torch.float64)
    cot = torch.randn(2, 17, d_model, generator=g, dtype=torch.float64)
    y_ours, gx_ours, gp_ours = _outputs_and_grads(ours, x, cot)
    y_theirs, gx_theirs, gp_theirs = _outputs_and_grads(theirs, x, cot)
    _assert_close(y_ours, y_theirs)
    _assert_close(gx_ours, gx_theirs)
    for name in gp_ours:
        _assert_close(gp_ours[name], gp_theirs[name], tol=1e-4)


def test_mamba2_torch_path_matches_reference_in_float64():
    torch.manual_seed(0)
    layer = _perturbed(Mamba2(32, d_state=8, head_dim=8, n_groups=2, chunk_size=4).double(), 3)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    cot = torch.randn(2, 11, 32, dtype=torch.float64)
    y_torch, gx_torch, _ = _outputs_and_grads(layer, x, cot)
    layer.backend = "reference"
    y_ref, gx_ref, _ = _outputs_and_grads(layer, x, cot)
    torch.testing.assert_close(y_torch, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx_torch, gx_ref, rtol=1e-10, atol=1e-10)


def test_mamba2_is_causal():
    torch.manual_seed(0)
    layer = Mamba2(16, d_state=4, head_dim=8, chunk_size=4).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 7:] += torch.randn(1, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[:, :7], layer(x2)[:, :7], rtol=0, atol=1e-12)
    assert not torch.allclose(layer(x)[:, 7:], layer(x2)[:, 7:])


def test_selective_internals():
    """delta is the step size after bias and softplus; state_energy is ||h_t||_F^2 summed over the heads,
    checked against the SSD reference op read out with unit vectors C = e_n (then y_t[p] = h_t[p, n])."""
    torch.manual_seed(0)
    layer = _perturbed(Mamba2(16, d_state=3, head_dim=8, n_groups=2, chunk_size=4).double(), 5)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    internals = layer.selective_internals(x)
    assert layer.is_selective and LAYERS["mamba2"] is Mamba2
    u, dt, B, _, _ = layer._scan_inputs(x)
    delta = torch.nn.functional.softplus(dt + layer.dt_bias)
    torch.testing.assert_close(internals["delta"], delta)
    assert internals["delta"].shape == (2, 6, layer.nheads)
    A = -torch.exp(layer.A_log)
    energy = torch.zeros(2, 6, dtype=torch.float64)
    for n in range(layer.d_state):
        C = torch.zeros_like(B)
        C[..., n] = 1.0
        h_n = ssd_reference(u, delta, A, B, C)  # (b, L, heads, head_dim): column n of every state
        energy += h_n.pow(2).sum(dim=(2, 3))
    torch.testing.assert_close(internals["state_energy"], energy, rtol=1e-10, atol=1e-12)
    # differentiable, as the internal attacks need
    internals["state_energy"].sum().backward()
    assert layer.A_log.grad is not None


def test_bad_sizes_are_one_clear_error():
    with pytest.raises(ValueError, match=r"d_inner = expand \* d_model = 64 is not a multiple of head_dim=24"):
        Mamba2(32, head_dim=24)
    with pytest.raises(ValueError, match=r"heads d_inner / head_dim = 4 is not a multiple of n_groups=3"):
        Mamba2(32, head_dim=16, n_groups=3)
    if SSD.kernel is None:  # until the SSD op has its Triton kernel, asking for it is refused at construction
        with pytest.raises(ValueError, match="backend='triton' is not available"):
            Mamba2(32, head_dim=16, backend="triton")
    with pytest.raises(ValueError, match="dt_limit"):
        Mamba2(32, head_dim=16, dt_limit=(0.1, 0.01))
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        Mamba2(32, head_dim=16, d_state=0)


def test_mamba2_classifier_and_checkpoint_round_trip(tmp_path):
    config = ModelConfig(layer="mamba2", d_input=3, d_model=32, d_state=8, n_layers=2, n_classes=4,
                         layer_options={"head_dim": 16, "n_groups": 2, "chunk_size": 16})
    torch.manual_seed(0)
    model = build_model(config).eval()
    x = torch.rand(2, 3, 6, 6)
    logits = model(x)
    assert logits.shape == (2, 4)
    trace = model.forward_trace(x)
    assert trace["blocks.0.mix"].shape == (2, 36, 64)  # the transform slot: the gated SSD output, d_inner wide
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    loaded, meta = load_checkpoint(path)
    assert meta["model_config"]["layer"] == "mamba2"
    torch.testing.assert_close(loaded(x), logits, rtol=0, atol=0)


def test_rmsnorm_backbone_option():
    """norm = "rmsnorm" and embed_norm = false (the pretrained Mamba backbones): RMSNorm everywhere, no norm
    after the embedding; bad values are one clear error."""
    config = ModelConfig(layer="mamba2", d_model=16, d_state=4, n_layers=1, prenorm=True, norm="rmsnorm",
                         norm_eps=1e-6, embed_norm=False, layer_options={"head_dim": 8})
    model = build_model(config)
    assert isinstance(model.embed_norm, torch.nn.Identity)
    assert isinstance(model.blocks[0].norm, torch.nn.RMSNorm) and model.blocks[0].norm.eps == 1e-6
    assert isinstance(model.final_norm, torch.nn.RMSNorm)
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'; choose one of layernorm, rmsnorm"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="norm_eps must be a positive number"):
        ModelConfig(norm_eps=0)


def test_default_head_dim_is_64_or_one_head():
    """head_dim None: mamba_ssm's 64, or one head of d_inner channels for a layer narrower than that (the zoo's
    small test models); an explicit head_dim is never changed."""
    assert (Mamba2(128).head_dim, Mamba2(128).nheads) == (64, 4)
    assert (Mamba2(8).head_dim, Mamba2(8).nheads) == (16, 1)
    with pytest.raises(ValueError, match="not a multiple of head_dim=64"):
        Mamba2(8, head_dim=64)


def test_layer_benchmark_script_runs(tmp_path):
    """benchmarks/bench_mamba2.py at toy size: every layer (and the transformers peer) timed, table and JSON."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_mamba2.py"
    spec = importlib.util.spec_from_file_location("bench_mamba2", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    bench.main(["--batch", "1", "--lengths", "16", "--repeats", "1", "--d-model", "16", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["layer"] for r in rows} == {"s6 (N 16)", "s6 (N 64)", "mamba2 (N 64)", "mamba2 (N 16)",
                                          "transformers Mamba2Mixer (N 64)"}
    assert all(r["fwd_s"] > 0 and r["fwd_bwd_s"] > 0 for r in rows)
    assert "| 16 | mamba2 (N 64) |" in bench.to_markdown(rows)
