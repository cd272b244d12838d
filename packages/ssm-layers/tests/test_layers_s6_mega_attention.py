"""S6 (Mamba), Mega and causal Attention against plain float64 references written out step by step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from advssm.ssm_layers.layers.attention import Attention
from advssm.ssm_layers.layers.mega import Mega
from advssm.ssm_layers.layers.s6 import S6
from advssm.ssm_layers.ops import selective_scan_ref
from torch import nn

D_MODEL = 16
FACTORIES = {
    "s6": lambda **kw: S6(D_MODEL, d_state=8, **kw),
    "mega-fft": lambda **kw: Mega(D_MODEL, d_state=8, z_dim=12, **kw),
    "mega-scan": lambda **kw: Mega(D_MODEL, d_state=8, z_dim=12, ema="scan", **kw),
    "attention": lambda **kw: Attention(D_MODEL, n_heads=4, **kw),
}


@pytest.fixture(params=sorted(FACTORIES))
def make_layer(request):
    def make(dtype=torch.float32, seed=0, **kw):
        torch.manual_seed(seed)
        return FACTORIES[request.param](**kw).to(dtype)

    return make


def randn(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_close_with_grads(layer, fast, reference, x, rtol, atol):
    """fast(x) == reference(x), and so are the gradients w.r.t. x and every parameter (random cotangent)."""
    x = x.clone().requires_grad_(True)
    inputs = [x, *layer.parameters()]
    y_fast, y_ref = fast(x), reference(x)
    torch.testing.assert_close(y_fast, y_ref, rtol=rtol, atol=atol)
    cotangent = randn(*y_ref.shape, seed=7, dtype=y_ref.dtype)
    g_fast = torch.autograd.grad(y_fast, inputs, cotangent, allow_unused=True)
    g_ref = torch.autograd.grad(y_ref, inputs, cotangent, allow_unused=True)
    for (name, _), a, b in zip([("x", x), *layer.named_parameters()], g_fast, g_ref, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, n=name: f"grad of {n}: {m}")


# ---------------------------------------------------------------- contract, shared by every layer


def test_shapes(make_layer):
    layer = make_layer()
    x = randn(2, 37, D_MODEL, dtype=torch.float32)
    assert layer(x).shape == (2, 37, D_MODEL)
    assert layer.mix(x).shape == (2, 37, layer.transform_dim)
    assert not layer.is_lti


def test_causal(make_layer):
    layer = make_layer(torch.float64).eval()
    x = randn(2, 24, D_MODEL)
    t = 11
    x2 = x.clone()
    x2[:, t] += randn(2, D_MODEL, seed=2)
    y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=1e-6)
    assert (y2[:, t:] - y[:, t:]).abs().amax() > 1e-3  # the perturbation does reach the present and future


def test_every_parameter_gets_a_finite_gradient(make_layer):
    layer = make_layer()
    layer(randn(2, 19, D_MODEL, dtype=torch.float32)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"{name} receives no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().amax() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("L", [1, 784])
def test_runs_at_length(make_layer, L):
    layer = make_layer()
    x = randn(2, L, D_MODEL, dtype=torch.float32).requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (2, L, D_MODEL) and torch.isfinite(y).all() and torch.isfinite(x.grad).all()


class Zero(nn.Module):
    def forward(self, y):
        return torch.zeros_like(y)


def test_output_transform_slot_is_used(make_layer):
    layer = make_layer(torch.float64).eval()
    x = randn(2, 13, D_MODEL)
    before = layer(x)
    layer.output_transform = Zero()
    after = layer(x)
    torch.testing.assert_close(after, layer.project(torch.zeros_like(layer.mix(x)), x))
    assert (after - before).abs().amax() > 1e-3


def test_same_seed_same_layer_and_output(make_layer):
    x = randn(2, 9, D_MODEL, dtype=torch.float32)
    a, b = make_layer(seed=3), make_layer(seed=3)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), make_layer(seed=4)(x))


def test_bad_input_shape_is_a_clear_error(make_layer):
    layer = make_layer()
    for bad in (torch.zeros(5, D_MODEL), torch.zeros(2, 5, D_MODEL + 1)):
        with pytest.raises(ValueError, match=r"expects input of shape \(batch, length, d_model=16\)"):
            layer(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"dropout": 1.0}, "dropout must be a probability"),
    ({"dropout": -0.1}, "dropout must be a probability"),
    ({"backend": "cuda"}, "unknown backend 'cuda'"),
])
def test_bad_common_arguments(make_layer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_layer(**kwargs)


@pytest.mark.parametrize("cls, kwargs, match", [
    (S6, {"d_model": 0}, "d_model must be a positive int"),
    (Mega, {"d_model": -3}, "d_model must be a positive int"),
    (Attention, {"d_model": 0}, "d_model must be a positive int"),
    (S6, {"d_model": 8, "d_state": 0}, "d_state must be a positive int"),
    (Mega, {"d_model": 8, "d_state": 0}, "d_state must be a positive int"),
    (S6, {"d_model": 8, "d_conv": 0}, "d_conv must be a positive int"),
    (S6, {"d_model": 8, "expand": 0}, "expand must be a positive int"),
    (S6, {"d_model": 8, "dt_rank": 0}, "dt_rank must be a positive int or .auto."),
    (S6, {"d_model": 8, "dt_rank": "full"}, "dt_rank must be a positive int or .auto., got .full."),
    (S6, {"d_model": 8, "dt_min": 0.2, "dt_max": 0.1}, "need 0 < dt_min <= dt_max"),
    (Mega, {"d_model": 8, "z_dim": 0}, "z_dim must be a positive int"),
    (Mega, {"d_model": 8, "ema": "conv"}, "ema must be one of fft, scan"),
    (Attention, {"d_model": 10, "n_heads": 4}, "n_heads must be a positive int dividing d_model=10"),
])
def test_bad_layer_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


# ---------------------------------------------------------------- S6


def s6_reference(layer: S6, x: torch.Tensor) -> torch.Tensor:
    """The Mamba block's mixer spelled out in float64: per-tap convolution loop, then selective_scan_ref."""
    x = x.double()
    W_in, W_x, W_dt = (m.weight.double() for m in (layer.in_proj, layer.x_proj, layer.dt_proj))
    xz = x @ W_in.T
    u, z = xz[..., : layer.d_inner], xz[..., layer.d_inner:]  # (B, L, d_inner)
    taps, L = layer.conv1d.weight.double()[:, 0, :], x.shape[1]  # taps[:, -1] multiplies the current step
    conv = layer.conv1d.bias.double().expand_as(u).clone()
    for j in range(layer.d_conv):
        lag = layer.d_conv - 1 - j
        conv[:, lag:] = conv[:, lag:] + taps[:, j] * u[:, : L - lag]
    u = conv * torch.sigmoid(conv)
    dbc = u @ W_x.T
    dt, B, C = dbc.split([layer.dt_rank, layer.d_state, layer.d_state], dim=-1)
    y = selective_scan_ref(
        u.transpose(1, 2), (dt @ W_dt.T).transpose(1, 2), -torch.exp(layer.A_log.double()),
        B.transpose(1, 2), C.transpose(1, 2), layer.D.double(), z=z.transpose(1, 2),
        delta_bias=layer.dt_proj.bias.double(), delta_softplus=True,
    )
    return y.transpose(1, 2)


@pytest.mark.parametrize("d_conv, dt_rank", [(4, "auto"), (3, 5)])
def test_s6_mix_matches_reference_float64(d_conv, dt_rank):
    torch.manual_seed(0)
    layer = S6(D_MODEL, d_state=6, d_conv=d_conv, dt_rank=dt_rank, backend="torch").double()
    with torch.no_grad():  # move away from the init so that every parameter matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = randn(3, 21, D_MODEL)
    assert_close_with_grads(layer, layer.mix, lambda v: s6_reference(layer, v), x, rtol=1e-9, atol=1e-10)


def test_s6_float32_matches_float64_reference():
    torch.manual_seed(0)
    layer = S6(D_MODEL, d_state=16)
    x = randn(2, 64, D_MODEL)
    torch.testing.assert_close(layer.mix(x.float()).double(), s6_reference(layer, x), rtol=6e-4, atol=2e-3)


def test_s6_initialisation():
    torch.manual_seed(0)
    layer = S6(32, d_state=5, expand=3, dt_min=2e-3, dt_max=5e-2)
    assert layer.transform_dim == 96 and layer.dt_rank == 2
    torch.testing.assert_close(-torch.exp(layer.A_log), -torch.arange(1.0, 6.0).expand(96, 5))
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 2e-3 * (1 - 1e-4) and dt.max() <= 5e-2 * (1 + 1e-4)
    assert torch.equal(layer.D, torch.ones(96))
    no_decay = {name for name, p in layer.named_parameters() if getattr(p, "_optim", {}).get("weight_decay") == 0.0}
    assert no_decay == {"A_log", "D"}


# ---------------------------------------------------------------- Mega


def mega_ema_reference(layer: Mega, x: torch.Tensor) -> torch.Tensor:
    """The damped EMA as its recurrence, one time step at a time, in float64, from the raw parameters."""
    alpha, damping = torch.sigmoid(layer.alpha_logit.double()), torch.sigmoid(layer.delta_logit.double())
    beta, gamma, omega = layer.beta.double(), layer.gamma.double(), layer.omega.double()
    x = x.double()
    h = x.new_zeros(x.shape[0], layer.d_model, layer.d_state)
    out = []
    for t in range(x.shape[1]):
        h = alpha * beta * x[:, t, :, None] + (1 - alpha * damping) * h
        out.append((gamma * h).sum(-1) / math.sqrt(layer.d_state) + omega * x[:, t])
    return torch.stack(out, dim=1)


def mega_gated_attention_reference(layer: Mega, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mega's gated attention with an explicit causal mask and softmax, in float64."""
    d, zd = layer.d_model, layer.z_dim

    def linear(m, v):
        return v @ m.weight.double().T + m.bias.double()

    m = F.silu(y.double())
    x = x.double()
    v = F.silu(linear(layer.v_proj, x))
    gates = linear(layer.gates_proj, m)
    update = torch.sigmoid(gates[..., :d])
    z = F.silu(gates[..., d: d + zd])
    reset = F.silu(gates[..., d + zd: 2 * d + zd])
    candidate = gates[..., 2 * d + zd:]
    scale, offset = layer.qk_scale.double(), layer.qk_offset.double()
    q, k = z * scale[0] + offset[0], z * scale[1] + offset[1]
    scores = q @ k.transpose(1, 2) / math.sqrt(zd)
    L = x.shape[1]
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    attended = torch.softmax(scores, dim=-1) @ v
    h = F.silu(candidate + linear(layer.h_proj, reset * attended))
    return update * h + (1 - update) * x


@pytest.mark.parametrize("ema", ["fft", "scan"])
def test_mega_mix_matches_recurrence_float64(ema):
    torch.manual_seed(0)
    layer = Mega(D_MODEL, d_state=5, z_dim=8, ema=ema, backend="torch").double()
    x = randn(2, 33, D_MODEL)
    assert_close_with_grads(layer, layer.mix, lambda v: mega_ema_reference(layer, v), x, rtol=1e-9, atol=1e-10)


def test_mega_float32_mix_matches_float64_recurrence():
    torch.manual_seed(0)
    layer = Mega(D_MODEL)
    x = randn(2, 300, D_MODEL)
    torch.testing.assert_close(layer.mix(x.float()).double(), mega_ema_reference(layer, x), rtol=1e-4, atol=1e-4)


def test_mega_ema_kernel_is_the_impulse_response():
    torch.manual_seed(0)
    layer = Mega(4, d_state=3).double()
    impulse = torch.zeros(1, 10, 4, dtype=torch.float64)
    impulse[:, 0] = 1.0
    response = layer.mix(impulse)[0].T  # (d_model, L)
    response[:, 0] -= layer.omega.detach()  # the omega skip acts at lag 0 only
    torch.testing.assert_close(layer.ema_kernel(10), response, rtol=1e-12, atol=1e-12)


def test_mega_project_matches_reference_float64():
    torch.manual_seed(0)
    layer = Mega(D_MODEL, d_state=4, z_dim=8).double()
    with torch.no_grad():  # the init makes q, k nearly zero; give the attention some shape to test
        layer.qk_scale.normal_()
        layer.qk_offset.normal_(std=0.3)
    x, y = randn(2, 17, D_MODEL), randn(2, 17, D_MODEL, seed=5)
    assert_close_with_grads(
        layer, lambda v: layer.project(y, v), lambda v: mega_gated_attention_reference(layer, y, v), x,
        rtol=1e-9, atol=1e-10,
    )
    torch.testing.assert_close(layer.project(y, x), mega_gated_attention_reference(layer, y, x))


# ---------------------------------------------------------------- Attention


def attention_reference(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """Per-head masked softmax(q k^T / sqrt(d_head)) v in float64, heads concatenated."""
    x = x.double()
    qkv = x @ layer.qkv.weight.double().T + layer.qkv.bias.double()
    q, k, v = qkv.split(layer.d_model, dim=-1)
    L, width = x.shape[1], layer.d_model // layer.n_heads
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    heads = []
    for i in range(layer.n_heads):
        cols = slice(i * width, (i + 1) * width)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(width)
        heads.append(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v[..., cols])
    return torch.cat(heads, dim=-1)


@pytest.mark.parametrize("n_heads", [1, 4])
def test_attention_mix_matches_reference_float64(n_heads):
    torch.manual_seed(0)
    layer = Attention(D_MODEL, n_heads=n_heads).double()
    x = randn(2, 15, D_MODEL)
    assert_close_with_grads(layer, layer.mix, lambda v: attention_reference(layer, v), x, rtol=1e-9, atol=1e-10)


def test_attention_float32_matches_float64_reference():
    torch.manual_seed(0)
    layer = Attention(D_MODEL)
    x = randn(2, 40, D_MODEL)
    torch.testing.assert_close(layer.mix(x.float()).double(), attention_reference(layer, x), rtol=1e-4, atol=1e-5)
