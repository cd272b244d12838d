"""The SSD op's PyTorch path (chunked) and dispatch against the float64 sequential reference.

Tolerances: the fp32 path against the float64 reference within the ops' documented FWD_TOL
(rtol 6e-4, atol 2e-3) forward and GRAD_TOL (rtol 1.2e-3, atol 4e-3) for every gradient; the
float64 path against the reference to 1e-10 (rtol and atol); gradcheck and gradgradcheck in
float64 at their defaults (eps 1e-6, atol 1e-5, rtol 1e-3).
"""
import importlib

import pytest
import torch
from advssm.ssm_layers.ops import FWD_TOL, GRAD_TOL, OPS, BackendError, ssd, ssd_reference, triton_status
from advssm.ssm_layers.ops.ssd import ssd_torch

cpu_mod = importlib.import_module("advssm.ssm_layers.ops._ssd_cpu")  # the torch path's chunked algorithm

F64 = torch.float64
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def _inputs(seed, batch, L, nheads, ngroups, headdim, dstate, D_per_channel=True, dtype=F64):
    """x, dt, A, B, C, D, z, dt_bias: dt raw (softplus-ed with the bias), A negative as Mamba-2's -exp(A_log)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=F64) * scale).to(dtype)

    A = -(torch.rand(nheads, generator=g, dtype=F64) * 2 + 0.1).to(dtype)
    return [rnd(batch, L, nheads, headdim), rnd(batch, L, nheads), A, rnd(batch, L, ngroups, dstate),
            rnd(batch, L, ngroups, dstate), rnd(nheads, headdim) if D_per_channel else rnd(nheads),
            rnd(batch, L, nheads, headdim), rnd(nheads, scale=0.5)]


def _run(impl, chunk_size, **kwargs):
    """impl on positional (x, dt, A, B, C, D, z, dt_bias) with the flags."""
    def fn(x, dt, A, B, C, D, z, dt_bias):
        return impl(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, **kwargs)
    return fn


def _value_and_grads(fn, inputs, grad_out, cast):
    leaves = [t.detach().to(cast).requires_grad_() for t in inputs]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, grad_out.to(y.dtype), allow_unused=True)
    return y.detach().to(F64), [torch.zeros_like(t, dtype=F64) if g is None else g.to(F64)
                                for t, g in zip(leaves, grads)]


def _assert_matches_reference(impl, inputs, chunk_size, fwd_tol, grad_tol, cast=torch.float32, **kwargs):
    """impl (inputs cast to ``cast``) against the float64 reference: y and the gradient of every input."""
    g = torch.Generator().manual_seed(123)
    grad_out = torch.randn(inputs[0].shape, generator=g, dtype=F64)
    y, grads = _value_and_grads(_run(impl, chunk_size, **kwargs), inputs, grad_out, cast)
    y_ref, grads_ref = _value_and_grads(_run(ssd_reference, chunk_size, **kwargs), inputs, grad_out, F64)
    torch.testing.assert_close(y, y_ref, **fwd_tol)
    for name, a, b in zip(NAMES, grads, grads_ref):
        torch.testing.assert_close(a, b, **grad_tol, msg=lambda m, name=name: f"gradient of {name}: {m}")


# (seed, batch, L, nheads, ngroups, headdim, dstate, chunk_size): L = 1, L a multiple of the chunk,
# L not a multiple, a chunk longer than L, one group per head, several heads per group
COMBOS = [
    (0, 2, 1, 2, 1, 3, 4, 8),
    (1, 2, 37, 4, 2, 3, 5, 8),
    (2, 1, 64, 6, 3, 4, 8, 16),
    (3, 2, 50, 4, 4, 2, 3, 7),
    (4, 1, 30, 8, 1, 5, 16, 64),
    (5, 2, 33, 4, 2, 8, 4, 1),
]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "b{1}-L{2}-h{3}-g{4}-p{5}-n{6}-Q{7}".format(*c))
def test_torch_path_fp32_matches_float64_reference(combo):
    seed, batch, L, nheads, ngroups, headdim, dstate, chunk = combo
    inputs = _inputs(seed, batch, L, nheads, ngroups, headdim, dstate, D_per_channel=seed % 2 == 0)
    _assert_matches_reference(ssd_torch, inputs, chunk, FWD_TOL, GRAD_TOL, dt_softplus=True)


@pytest.mark.parametrize("combo", COMBOS[:4], ids=lambda c: "L{2}-Q{7}".format(*c))
def test_torch_path_float64_is_the_reference(combo):
    seed, batch, L, nheads, ngroups, headdim, dstate, chunk = combo
    inputs = _inputs(seed, batch, L, nheads, ngroups, headdim, dstate)
    tight = {"rtol": 1e-10, "atol": 1e-10}
    _assert_matches_reference(ssd_torch, inputs, chunk, tight, tight, cast=F64, dt_softplus=True)


@pytest.mark.parametrize("growing", [False, True], ids=["decaying", "some-steps-grow"])
@pytest.mark.parametrize("rows,block_bytes", [(3, 1), (4, 3000), (64, 2 << 20)])
def test_score_tiles_cover_the_causal_scores(rows, block_bytes, growing, monkeypatch):
    """The diagonal blocks made in tiles (rows i0:i1 of a few chunks): row blocks of 3 / 4 / 64 in chunks of 10
    (the last row block partial), one chunk per block or several, equal the reference in float64 and in fp32,
    forward and every gradient: with every step decaying (the columns before a tile factored) and with some
    steps growing (dt < 0 without softplus: every column made elementwise)."""
    monkeypatch.setattr(cpu_mod, "_ROWS", rows)
    monkeypatch.setattr(cpu_mod, "_BLOCK_BYTES", block_bytes)
    inputs = _inputs(14, 2, 27, 4, 2, 3, 4)
    if growing:
        inputs[1] = inputs[1] * 0.2  # raw dt, about a third of it below -0.1
        assert (inputs[1] < 0).any()
    tight = {"rtol": 1e-10, "atol": 1e-10}
    _assert_matches_reference(ssd_torch, inputs, 10, tight, tight, cast=F64, dt_softplus=not growing)
    _assert_matches_reference(ssd_torch, inputs, 10, FWD_TOL, GRAD_TOL, dt_softplus=not growing)


@pytest.mark.parametrize("chunk", [1, 4, 16, 256])
def test_the_result_does_not_depend_on_the_chunk_size(chunk):
    inputs = _inputs(7, 2, 21, 4, 2, 3, 4)
    y = _run(ssd_torch, chunk, dt_softplus=True)(*inputs)
    torch.testing.assert_close(y, _run(ssd_torch, 5, dt_softplus=True)(*inputs), rtol=1e-12, atol=1e-12)


def test_dt_options_without_softplus_and_with_a_limit():
    """No softplus (dt used as given, here positive), a clamp that binds on both sides, D per head, no z."""
    x, dt, A, B, C, D, _, bias = _inputs(8, 2, 19, 4, 2, 3, 4, D_per_channel=False)
    dt = dt.abs()
    for kwargs in ({"dt_softplus": False}, {"dt_softplus": True, "dt_limit": (0.3, 1.2)}):
        def fn(x, dt, A, B, C, D, z, bias, impl=None, kwargs=kwargs):
            return impl(x, dt, A, B, C, 4, D=D, dt_bias=bias, **kwargs)
        inputs = [x, dt, A, B, C, D, x, bias]  # z unused: its gradient is 0 on both
        g = torch.Generator().manual_seed(0)
        grad_out = torch.randn(x.shape, generator=g, dtype=F64)
        y, grads = _value_and_grads(lambda *a: fn(*a, impl=ssd_torch), inputs, grad_out, torch.float32)
        y_ref, grads_ref = _value_and_grads(lambda *a: fn(*a, impl=ssd_reference), inputs, grad_out, F64)
        torch.testing.assert_close(y, y_ref, **FWD_TOL)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, **GRAD_TOL)
    # the clamp really binds: the output changes with the limit
    assert not torch.allclose(ssd_torch(x, dt, A, B, C, 4, dt_softplus=True, dt_limit=(0.3, 1.2)),
                              ssd_torch(x, dt, A, B, C, 4, dt_softplus=True))


def test_strong_decay_stays_finite_and_exact():
    """dt up to 10 and A down to -50: exp(dt A) underflows to 0, nothing overflows, the values stay the reference's."""
    x, dt, A, B, C, D, z, bias = _inputs(9, 2, 40, 4, 2, 3, 4)
    g = torch.Generator().manual_seed(9)
    dt = torch.rand(2, 40, 4, generator=g, dtype=F64) * 10
    dt[:, ::5] = 1e-3
    A = A * 25
    inputs = [x, dt, A, B, C, D, z, bias.abs()]
    _assert_matches_reference(ssd_torch, inputs, 16, FWD_TOL, GRAD_TOL)


@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 3)])
def test_gradcheck_and_gradgradcheck(L, chunk):
    """First and second derivatives of the torch path in float64 (double backward: Jacobian regularisation)."""
    inputs = [t.requires_grad_() for t in _inputs(L, 1, L, 2, 1, 2, 3)]
    fn = _run(ssd_torch, chunk, dt_softplus=True)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def test_half_inputs_compute_in_fp32_and_keep_their_dtype():
    inputs = [t.to(torch.bfloat16) for t in _inputs(10, 2, 24, 4, 2, 4, 4)]
    y = _run(ssd_torch, 8, dt_softplus=True)(*inputs)
    y32 = _run(ssd_reference, 8, dt_softplus=True)(*(t.float() for t in inputs))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y32.to(torch.bfloat16))


def test_under_autocast_the_torch_path_stays_fp32():
    inputs = [t.float() for t in _inputs(11, 2, 24, 4, 2, 4, 4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _run(ssd_torch, 8, dt_softplus=True)(*inputs)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, _run(ssd_reference, 8, dt_softplus=True)(*inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_dispatch_runs_each_backend(backend):
    x, dt, A, B, C, D, z, bias = inputs = _inputs(12, 1, 9, 2, 1, 2, 3, dtype=torch.float32)
    y = ssd(x, dt, A, B, C, 4, D=D, z=z, dt_bias=bias, dt_softplus=True, backend=backend)
    torch.testing.assert_close(y, _run(ssd_reference, 4, dt_softplus=True)(*inputs), **FWD_TOL)
    assert OPS["ssd"].reference is ssd_reference and OPS["ssd"].torch is ssd_torch


def test_triton_backend_on_cpu_is_refused_with_the_reason():
    x, dt, A, B, C, *_ = _inputs(13, 1, 4, 2, 1, 2, 3, dtype=torch.float32)
    if triton_status("cpu")[0]:
        pytest.skip("TRITON_INTERPRET=1: the kernel runs on the CPU here (test_kernels.py covers it)")
    with pytest.raises(BackendError, match="'torch'"):
        ssd(x, dt, A, B, C, 4, backend="triton")


@pytest.mark.parametrize("change,match", [
    (lambda a: a.__setitem__(0, a[0][0]), r"x must be \(batch, L, nheads, headdim\)"),
    (lambda a: a.__setitem__(0, a[0][:, :0]), "sequence is empty"),
    (lambda a: a.__setitem__(1, a[1][..., :-1]), r"dt must be \(batch, L, nheads\)"),
    (lambda a: a.__setitem__(2, a[2][:-1]), r"A must be \(nheads,\)"),
    (lambda a: a.__setitem__(3, a[3][:, :-1]), r"B must be \(batch, L, ngroups, dstate\)"),
    (lambda a: (a.__setitem__(3, a[3][:, :, :1].expand(-1, -1, 3, -1)),
                a.__setitem__(4, a[4][:, :, :1].expand(-1, -1, 3, -1))), "must be a multiple of ngroups=3"),
    (lambda a: a.__setitem__(4, a[4][..., :-1]), "C must have B's shape"),
    (lambda a: a.__setitem__(5, a[5][:, :-1]), r"D must be \(nheads, headdim\)"),
    (lambda a: a.__setitem__(6, a[6][:1]), "z must have x's shape"),
    (lambda a: a.__setitem__(7, a[7][:1]), r"dt_bias must be \(nheads,\)"),
    (lambda a: a.__setitem__(1, a[1].to(torch.int64)), "dt must be a real floating tensor"),
])
@pytest.mark.parametrize("impl", [ssd_torch, ssd_reference])
def test_bad_input_raises_one_clear_error(change, match, impl):
    args = _inputs(0, 2, 6, 4, 2, 3, 5)
    change(args)
    with pytest.raises(ValueError, match=match):
        _run(impl, 4)(*args)


@pytest.mark.parametrize("kwargs,match", [
    ({"chunk_size": 0}, "chunk_size must be a positive int"),
    ({"chunk_size": 2.5}, "chunk_size must be a positive int"),
    ({"dt_limit": (1.0, 0.5)}, "min <= max"),
    ({"dt_limit": 3.0}, "pair"),
])
def test_bad_options_raise(kwargs, match):
    x, dt, A, B, C, *_ = _inputs(0, 1, 4, 2, 1, 2, 3)
    with pytest.raises(ValueError, match=match):
        ssd(x, dt, A, B, C, **kwargs)
