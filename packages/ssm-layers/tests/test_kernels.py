"""Triton kernels against the float64 references: forward and every gradient.

Runs under ``TRITON_INTERPRET=1`` on the CPU (``nox -s kernels``) or on a CUDA device. Every test is
marked ``kernels``, so the default suite (``-m "not kernels"``) deselects them; asked for where they
cannot run, they skip with the reason. Shapes are small because interpreted kernels are slow;
lengths include 1 and values that are not multiples of the chunk / block sizes.
"""
from __future__ import annotations

import os

import pytest
import torch
from advssm.ssm_layers.ops import (  # triton itself is imported lazily, by the kernels' wrappers
    diag_scan,
    diag_scan_ref,
    selective_scan,
    selective_scan_ref,
    vandermonde_kernel,
    vandermonde_kernel_ref,
)
from advssm.ssm_layers.ops import triton as triton_ops

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                       reason="Triton kernels need CUDA or TRITON_INTERPRET=1 (nox -s kernels)"),
]
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
FWD_TOL = {"rtol": 6e-4, "atol": 2e-3}
GRAD_TOL = {"rtol": 1.2e-3, "atol": 4e-3}
SINGLE = {torch.float64: torch.float32, torch.complex128: torch.complex64}


def _double(t):
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64).requires_grad_()


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def assert_matches_reference(fast, ref, args, names, **kwargs):
    """Compare ``fast`` (fp32 inputs) with ``ref`` (float64 copies): outputs, then the gradient of a
    random linear functional of every output with respect to every tensor argument."""
    fast_args = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    ref_args = [_double(a) if isinstance(a, torch.Tensor) else a for a in args]
    out_fast, out_ref = _as_tuple(fast(*fast_args, **kwargs)), _as_tuple(ref(*ref_args, **kwargs))
    assert len(out_fast) == len(out_ref)
    for i, (f, r) in enumerate(zip(out_fast, out_ref)):
        assert f.dtype == SINGLE[r.dtype], f"output {i} has dtype {f.dtype}, expected {SINGLE[r.dtype]}"
        torch.testing.assert_close(f.to(r.dtype), r, **FWD_TOL, msg=lambda m, i=i: f"output {i}: {m}")
    weights = [torch.randn_like(r) for r in out_ref]
    loss_fast = sum((f * w.to(f.dtype).conj()).real.sum() for f, w in zip(out_fast, weights))
    loss_ref = sum((r * w.conj()).real.sum() for r, w in zip(out_ref, weights))
    tensors = [(n, f, r) for n, f, r in zip(names, fast_args, ref_args) if isinstance(f, torch.Tensor)]
    grads_fast = torch.autograd.grad(loss_fast, [f for _, f, _ in tensors])
    grads_ref = torch.autograd.grad(loss_ref, [r for _, _, r in tensors])
    # some gradients are legitimately zero (e.g. for A at L = 1), but not all of them
    assert max(g.abs().max() for g in grads_ref) > 10 * GRAD_TOL["atol"], "gradients too small to test anything"
    for (name, f, _), gf, gr in zip(tensors, grads_fast, grads_ref):
        assert gf.dtype == f.dtype and gf.shape == f.shape, f"grad {name}: {gf.dtype} {tuple(gf.shape)}"
        torch.testing.assert_close(gf.to(gr.dtype), gr, **GRAD_TOL, msg=lambda m, name=name: f"grad {name}: {m}")


# --------------------------------------------------------------------------- selective scan

SS_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _selective_inputs(batch, dim, N, L, var_B, var_C, with_D, with_z, with_bias, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(DEVICE)

    return [
        rand(batch, dim, L),
        (torch.rand(batch, dim, L, generator=g) * 0.6 + 0.05).to(DEVICE),
        -(torch.rand(dim, N, generator=g) + 0.3).to(DEVICE),  # decaying, as in S6's A = -exp(A_log)
        rand(batch, N, L) if var_B else rand(dim, N),
        rand(batch, N, L) if var_C else rand(dim, N),
        rand(dim) if with_D else None,
        rand(batch, dim, L) if with_z else None,
        rand(dim, scale=0.3) if with_bias else None,
    ]


# (batch, dim, N, L, var_B, var_C, D, z, delta_bias, softplus, return_last_state)
SS_CASES = [
    (2, 4, 4, 1, True, True, True, True, True, True, True),
    (2, 6, 8, 5, True, True, True, True, True, True, False),
    (2, 4, 4, 16, False, False, False, False, False, False, False),
    (2, 8, 4, 37, True, True, True, True, True, True, True),
    (1, 5, 3, 37, False, True, True, False, False, True, True),
    (2, 4, 6, 20, True, False, False, True, True, False, False),
    (2, 40, 5, 17, True, True, True, True, False, True, True),  # two channel blocks, padded N
]


@pytest.mark.parametrize("case", SS_CASES, ids=lambda c: "b{}-d{}-n{}-L{}".format(*c[:4]))
def test_selective_scan_matches_reference(case):
    batch, dim, N, L, var_B, var_C, with_D, with_z, with_bias, softplus, last = case
    args = _selective_inputs(batch, dim, N, L, var_B, var_C, with_D, with_z, with_bias, seed=hash(case) % 2**31)
    present = [(n, a) for n, a in zip(SS_NAMES, args) if a is not None]

    def call(fn):
        def run(*tensors):
            kw = dict(zip([n for n, _ in present], tensors))
            return fn(**kw, delta_softplus=softplus, return_last_state=last)
        return run

    assert_matches_reference(call(triton_ops.selective_scan_triton), call(selective_scan_ref),
                             [a for _, a in present], [n for n, _ in present])


def test_selective_scan_is_deterministic():
    args = [a.requires_grad_() if a is not None else None
            for a in _selective_inputs(2, 8, 4, 37, True, True, True, True, True, 7)]
    results = []
    for _ in range(2):
        y, last = triton_ops.selective_scan_triton(*args, delta_softplus=True, return_last_state=True)
        grads = torch.autograd.grad((y * y).sum() + last.sum(), [a for a in args if a is not None])
        results.append((y, last, *grads))
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_selective_scan_triton_rejects_bad_shapes():
    u, delta, A, B, C, *_ = _selective_inputs(2, 4, 4, 5, True, True, False, False, False, 0)
    with pytest.raises(ValueError, match="A must be"):
        triton_ops.selective_scan_triton(u, delta, A[:, :, None], B, C)


# --------------------------------------------------------------------------- diagonal scan

# (a shape, b shape, h0 shape or None)
DIAG_CASES = [
    ((3, 1), (3, 1), None),
    ((3, 1), (2, 3, 5), (3,)),
    ((2, 3, 37), (2, 3, 37), (2, 3)),
    ((4, 1), (2, 4, 16), None),
    ((70, 1), (70, 9), (70,)),  # two row blocks
    ((2, 3, 1), (2, 3, 21), (1,)),  # time-invariant a per row, h0 broadcast
]


@pytest.mark.parametrize("is_complex", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", DIAG_CASES, ids=lambda c: "a{}-b{}".format(*c[:2]))
def test_diag_scan_matches_reference(case, is_complex):
    a_shape, b_shape, h0_shape = case
    g = torch.Generator().manual_seed(hash((case, is_complex)) % 2**31)
    dtype = torch.complex64 if is_complex else torch.float32

    def rand(shape):
        re = torch.randn(shape, generator=g)
        return torch.complex(re, torch.randn(shape, generator=g)) if is_complex else re

    a = torch.rand(a_shape, generator=g) * 0.9 + 0.05  # |a| < 1: a stable recurrence
    if is_complex:
        a = a * torch.exp(1j * torch.randn(a_shape, generator=g))
    args = [a.to(dtype), rand(b_shape)] + ([rand(h0_shape)] if h0_shape else [])
    assert_matches_reference(triton_ops.diag_scan_triton, diag_scan_ref, [t.to(DEVICE) for t in args],
                             ["a", "b", "h0"])


# --------------------------------------------------------------------------- Vandermonde kernel


@pytest.mark.parametrize("H,N,L", [(3, 5, 1), (4, 8, 37), (2, 40, 130)])
def test_vandermonde_matches_reference(H, N, L):
    g = torch.Generator().manual_seed(H * 1000 + N * 10 + L)
    C = torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g))
    # S4D-like: small negative real part, moderate frequencies (fp32 phases stay accurate)
    dtA = torch.complex(-torch.rand(H, N, generator=g) * 0.1, torch.randn(H, N, generator=g) * 0.5)
    assert_matches_reference(triton_ops.vandermonde_triton, vandermonde_kernel_ref,
                             [C.to(DEVICE), dtA.to(DEVICE), L], ["C", "dtA", "L"])


# --------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("op", ["selective_scan", "diag_scan", "vandermonde"])
def test_backend_triton_routes_to_the_kernels(op, monkeypatch):
    name = {"selective_scan": "selective_scan_triton", "diag_scan": "diag_scan_triton",
            "vandermonde": "vandermonde_triton"}[op]
    calls = []
    real = getattr(triton_ops, name)
    monkeypatch.setattr(triton_ops, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    if op == "selective_scan":
        u, delta, A, B, C, D, z, bias = _selective_inputs(2, 4, 4, 5, True, True, True, True, True, 3)
        out = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend="triton")
        ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    elif op == "diag_scan":
        a, b = torch.rand(3, 1, device=DEVICE) * 0.9, torch.randn(2, 3, 6, device=DEVICE)
        out, ref = diag_scan(a, b, backend="triton"), diag_scan_ref(a, b)
    else:
        C = torch.randn(2, 4, dtype=torch.complex64, device=DEVICE)
        dtA = torch.complex(-torch.rand(2, 4), torch.randn(2, 4)).to(DEVICE)
        out, ref = vandermonde_kernel(C, dtA, 7, backend="triton"), vandermonde_kernel_ref(C, dtA, 7)
    assert calls == [1]
    torch.testing.assert_close(out, ref, **FWD_TOL)


def test_double_backward_fails_loudly():
    C = torch.randn(2, 4, dtype=torch.complex64, device=DEVICE, requires_grad=True)
    dtA = torch.complex(-torch.rand(2, 4), torch.randn(2, 4)).to(DEVICE).requires_grad_()
    (grad_C,) = torch.autograd.grad(triton_ops.vandermonde_triton(C, dtA, 5).square().sum(), [C], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_C.abs().sum().backward()


def test_selective_scan_half_inputs_give_the_torch_paths_result():
    """fp16 inputs: output in fp16, last state in fp32 (as the torch path and mamba_ssm return it)."""
    from advssm.ssm_layers.ops.selective_scan import selective_scan_torch

    args = [a.half() if a is not None else None
            for a in _selective_inputs(2, 4, 4, 21, True, True, True, True, True, 11)]
    y, last = triton_ops.selective_scan_triton(*args, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_torch(*args, delta_softplus=True, return_last_state=True)
    assert (y.dtype, last.dtype) == (torch.float16, torch.float32) == (y_ref.dtype, last_ref.dtype)
    torch.testing.assert_close(y, y_ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(last, last_ref, **FWD_TOL)


def test_global_override_runs_a_layer_on_the_kernels(monkeypatch):
    from advssm.ssm_layers.layers import S6

    torch.manual_seed(0)
    layer = S6(8, d_state=4).to(DEVICE)
    x = torch.randn(2, 7, 8, device=DEVICE)
    expected = layer(x)
    calls = []
    real = triton_ops.selective_scan_triton
    monkeypatch.setattr(triton_ops, "selective_scan_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("ADVSSM_BACKEND", "triton")
    torch.testing.assert_close(layer(x), expected, **FWD_TOL)
    assert calls == [1]
