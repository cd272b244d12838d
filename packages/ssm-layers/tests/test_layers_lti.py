"""S4, S4D, DSS and S5 against the obviously-right reference: each layer rebuilt from its raw
parameters as one dense complex discrete system (x_t = M x_{t-1} + B u_t, y_t = Re(C x_t) + D u_t),
run step by step in float64; its kernel Re(C M^l B) materialised by matrix powers."""
from __future__ import annotations

import math

import pytest
import torch
from advssm.ssm_layers.layers.dss import DSS
from advssm.ssm_layers.layers.s4 import S4, hippo_legs, legs_dplr, with_conjugates
from advssm.ssm_layers.layers.s4d import S4D
from advssm.ssm_layers.layers.s5 import S5
from advssm.ssm_layers.ops import fft_conv_ref

H = 4  # channels in the reference tests: the dense systems have H * N states
CLASSES = {"s4": S4, "s4d": S4D, "dss": DSS, "s5": S5}


def randn(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def cplx(t):
    return torch.view_as_complex(t)


# ------------------------------------------------ each layer as a dense system, from raw parameters


def zoh(dtA, A):
    return dtA.exp(), (dtA.exp() - 1) / A


def system_s4d(m):
    A = torch.complex(-m.log_A_real.exp(), m.A_imag)
    dA, dB = zoh(A * m.log_dt.exp()[:, None], A)
    C = 2 * cplx(m.C) * dB  # B = 1 folded into C; conjugate pairs give the 2 Re
    return [torch.diag(a) for a in dA], [torch.ones(len(a), 1, dtype=a.dtype) for a in dA], [c[None] for c in C]


def system_dss(m):
    Lam = torch.complex(-m.log_lambda_real.exp(), m.lambda_imag)
    dA, dB = zoh(Lam * m.log_dt.exp()[:, None], Lam)
    C = 2 * cplx(m.W) * dB
    return [torch.diag(a) for a in dA], [torch.ones(len(a), 1, dtype=a.dtype) for a in dA], [c[None] for c in C]


def system_s4(m):
    """Full conjugate system, bilinear discretisation, dense matrices per channel."""
    full = lambda z: torch.cat([z, z.conj()], -1)  # noqa: E731
    Lam = full(torch.complex(-m.log_lambda_real.exp(), m.lambda_imag))
    P, B, C = full(cplx(m.P)), full(cplx(m.B)), full(cplx(m.C))
    A = torch.diag(Lam) - torch.outer(P, P.conj())
    eye = torch.eye(len(Lam), dtype=A.dtype)
    Ms, Bs = [], []
    for dt in m.log_dt.exp():
        inv = torch.linalg.inv(eye - dt / 2 * A)
        Ms.append(inv @ (eye + dt / 2 * A))
        Bs.append(inv @ (dt * B[len(Bs)])[:, None])
    return Ms, Bs, [c[None] for c in C]


def system_s5(m):
    Lam = torch.complex(-m.log_lambda_real.exp(), m.lambda_imag)
    dA, dB = zoh(Lam * m.log_dt.exp(), Lam)
    return [torch.diag(dA)], [dB[:, None] * cplx(m.B)], [cplx(m.C)]


SYSTEMS = {"s4": system_s4, "s4d": system_s4d, "dss": system_dss, "s5": system_s5}


def dense_system(name, m):
    """(M (S, S), B (S, H), C (H, S)): per-channel blocks joined block-diagonally."""
    return tuple(torch.block_diag(*blocks) for blocks in SYSTEMS[name](m))


def recurrence(M, B, C, D, u):
    """y_t = Re(C x_t) + D u_t with x_t = M x_{t-1} + B u_t, step by step; u (batch, L, H)."""
    x = torch.zeros(u.shape[0], M.shape[0], dtype=M.dtype)
    ys = []
    for t in range(u.shape[1]):
        x = x @ M.T + u[:, t].to(M.dtype) @ B.T
        ys.append((x @ C.T).real + D * u[:, t])
    return torch.stack(ys, dim=1)


def dense_kernel(M, B, C, L):
    """K[h_out, h_in, l] = Re(C M^l B), with M^l B by repeated multiplication."""
    power_B, ks = B, []
    for _ in range(L):
        ks.append((C @ power_B).real)
        power_B = M @ power_B
    return torch.stack(ks, dim=-1)


def as_mimo(name, K):
    return K if name == "s5" else torch.diag_embed(K.transpose(0, 1)).permute(1, 2, 0)


def make(name, d_model=H, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    kw.setdefault("d_state", 8)
    return CLASSES[name](d_model, **kw).to(dtype)


names = pytest.mark.parametrize("name", sorted(CLASSES))


# ------------------------------------------------------------------------- against the references


@names
def test_mix_matches_sequential_recurrence_forward_and_gradient(name):
    layer = make(name)
    x = randn(2, 33, H, seed=2).requires_grad_(True)
    y = layer.mix(x)
    y_ref = recurrence(*dense_system(name, layer), layer.D, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    cot = randn(*y.shape, seed=3)
    ssm = {n: p for n, p in layer.named_parameters() if not n.startswith("output_linear")}
    inputs = [x, *ssm.values()]
    for g, g_ref, label in zip(torch.autograd.grad(y, inputs, cot), torch.autograd.grad(y_ref, inputs, cot),
                               ["x", *ssm]):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-9, msg=lambda m, n=label: f"grad of {n}: {m}")


@names
@pytest.mark.parametrize("L", [1, 8, 31])
def test_conv_kernel_is_the_materialised_kernel(name, L):
    layer = make(name, seed=L)
    K, D = layer.conv_kernel(L)
    torch.testing.assert_close(as_mimo(name, K), dense_kernel(*dense_system(name, layer), L), rtol=1e-9, atol=1e-10)
    assert D.shape == (H,)


def test_s4_kernel_matches_dense_at_the_paper_size():
    """N = 64 (HiPPO-LegS is ill-conditioned there), L = 784: the Cauchy + Woodbury kernel at the roots of
    unity equals C_bar A_bar^l B_bar of the materialised bilinear system."""
    layer = make("s4", d_model=2, d_state=64, seed=3, dt_min=1e-3, dt_max=1e-1)
    K, _ = layer.conv_kernel(784)
    K_ref = torch.diagonal(dense_kernel(*dense_system("s4", layer), 784)).T
    assert (K - K_ref).abs().max() <= 1e-6 * K_ref.abs().max()


@names
def test_mix_is_the_convolution_with_conv_kernel(name):
    layer = make(name)
    x = randn(2, 40, H, seed=4)
    K, D = layer.conv_kernel(40)
    u = x.transpose(1, 2)
    if name == "s5":  # MIMO: y_h = sum_j K[h, j] * u_j + D_h u_h, one lag at a time
        y = D[:, None] * u
        for s in range(40):
            y = y + torch.nn.functional.pad(torch.einsum("hj,bjl->bhl", K[..., s], u[..., : 40 - s]), (s, 0))
    else:
        y = fft_conv_ref(u, K, D)
    torch.testing.assert_close(layer.mix(x), y.transpose(1, 2), rtol=1e-9, atol=1e-10)


def test_legs_dplr_reconstructs_hippo_legs():
    for N in (2, 8, 64):
        A, B, _ = hippo_legs(N)
        Lam, P, B_modes, V = legs_dplr(N)
        Vf, Pf = with_conjugates(V), with_conjugates(P)
        A_rec = Vf @ (torch.diag(with_conjugates(Lam)) - torch.outer(Pf, Pf.conj())) @ Vf.conj().T
        torch.testing.assert_close(A_rec, A.to(A_rec.dtype), rtol=0, atol=1e-10 * N)
        torch.testing.assert_close(Vf @ with_conjugates(B_modes), B.to(A_rec.dtype), rtol=0, atol=1e-10 * N)
        torch.testing.assert_close(Lam.real, torch.full((N // 2,), -0.5, dtype=torch.float64))
        assert (Lam.imag > 0).all()


# ------------------------------------------------------------------------------------ the contract


@names
@pytest.mark.parametrize("L", [1, 784])
def test_shapes_and_lengths(name, L):
    layer = make(name, d_model=16, dtype=torch.float32, d_state=16)
    x = randn(2, L, 16, dtype=torch.float32).requires_grad_(True)
    out = layer(x)
    assert out.shape == (2, L, 16) and layer.mix(x).shape == (2, L, layer.transform_dim)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert layer.is_lti


@names
def test_causal(name):
    layer = make(name, d_model=8)
    x = randn(2, 50, 8, seed=5)
    t = 23
    x2 = x.clone()
    x2[:, t] += randn(2, 8, seed=6)
    y, y2 = layer(x), layer(x2)
    assert (y[:, :t] - y2[:, :t]).abs().max() < 1e-6
    assert (y[:, t] - y2[:, t]).abs().max() > 1e-3


@names
def test_gradients_finite_for_every_parameter(name):
    layer = make(name, d_model=8, dtype=torch.float32)
    layer(randn(2, 64, 8, dtype=torch.float32)).square().mean().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@names
def test_output_transform_slot_is_used(name):
    layer = make(name)
    x = randn(2, 20, H, seed=8)
    before = layer(x)
    layer.output_transform = torch.nn.Module()
    layer.output_transform.forward = lambda y: torch.zeros_like(y)
    after = layer(x)
    torch.testing.assert_close(after, layer.project(torch.zeros_like(x), x))
    assert not torch.allclose(before, after)


@names
def test_same_seed_same_layer(name):
    x = randn(2, 30, H, dtype=torch.float32)
    a, b = make(name, dtype=torch.float32), make(name, dtype=torch.float32)
    assert torch.equal(a(x), b(x))


@names
def test_lr_freezes_or_tags_the_ssm_parameters(name):
    frozen, tagged = make(name, lr=0.0), make(name, lr=1e-3)
    params = dict(tagged.named_parameters())
    assert "log_dt" in dict(frozen.named_buffers()) and "log_dt" not in dict(frozen.named_parameters())
    assert params["log_dt"]._optim == {"lr": 1e-3, "weight_decay": 0.0}
    assert not hasattr(params["D"], "_optim")


@names
@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=0), "d_model must be a positive int"),
    (dict(d_model=-3), "d_model must be a positive int"),
    (dict(d_state=0), "d_state must be a positive int"),
    (dict(d_state=-2), "d_state must be a positive int"),
    (dict(dropout=1.5), "dropout must be"),
    (dict(backend="cuda"), "unknown backend"),
    (dict(dt_min=0.1, dt_max=0.01), "dt_min <= dt_max"),
    (dict(lr=-1.0), "lr must be"),
])
def test_bad_arguments(name, kwargs, match):
    kwargs = {"d_model": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        CLASSES[name](kwargs.pop("d_model"), **kwargs)


@pytest.mark.parametrize("cls", [S4, S4D, DSS])
def test_odd_state_size_is_refused_where_modes_come_in_pairs(cls):
    with pytest.raises(ValueError, match="d_state must be even"):
        cls(4, d_state=7)
    assert S5(4, d_state=7).conv_kernel(3)[0].shape == (4, 4, 3)


@names
@pytest.mark.parametrize("shape", [(2, 10), (2, 10, 5), (10, 4, 2, 1)])
def test_wrong_input_shape(name, shape):
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, length, d_model=4\)"):
        make(name)(torch.zeros(shape, dtype=torch.float64))


def test_s4d_init_is_s4d_lin():
    layer = make("s4d", d_state=8)
    A = torch.complex(-layer.log_A_real.exp(), layer.A_imag)
    torch.testing.assert_close(A[0], torch.complex(torch.full((4,), -0.5, dtype=torch.float64),
                                                   math.pi * torch.arange(4, dtype=torch.float64)))


@names
def test_conv_kernel_refuses_empty_length(name):
    with pytest.raises(ValueError, match="L must be"):
        make(name).conv_kernel(0)


@names
def test_float32_mix_tracks_float64(name):
    """The fp32 path at the paper's sizes (d_state 32, L 784) against the same weights in fp64:
    measured max error at most 2e-6 of the output's scale; 1e-4 leaves room for other BLAS builds."""
    layer = make(name, d_model=8, d_state=32, dtype=torch.float32, seed=4)
    x = randn(2, 784, 8, seed=9)
    y32 = layer.mix(x.float()).double()
    y64 = layer.double().mix(x)
    assert (y32 - y64).abs().max() <= 1e-4 * y64.abs().max()
