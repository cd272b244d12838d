"""The selective scan's CPU path (``ops/_selective_scan_cpu.py``) against the float64 sequential
reference ``selective_scan_ref``: outputs (y and the last state) and every input's gradient, on
fresh random inputs, at lengths 1, odd, and not a multiple of the time block.

Tolerances: float64 inputs are computed in float64 and must match the reference to 1e-10
(an fp32 computation misses that by orders of magnitude); fp32 inputs match the float64
reference to rtol 1e-4 / atol 1e-4 forward and rtol 2e-4 / atol 2e-4 for gradients (a
sequential fp32 recurrence; mamba_ssm's kernels are tested to 6e-4 / 2e-3).
"""
import importlib

import pytest
import torch
from advssm.ssm_layers.ops._selective_scan_cpu import selective_scan_cpu
from advssm.ssm_layers.ops.selective_scan import selective_scan_ref, selective_scan_torch

cpu_mod = importlib.import_module("advssm.ssm_layers.ops._selective_scan_cpu")

F64 = torch.float64
TOL = {torch.float64: (dict(rtol=1e-10, atol=1e-10), dict(rtol=1e-10, atol=1e-10)),
       torch.float32: (dict(rtol=1e-4, atol=1e-4), dict(rtol=2e-4, atol=2e-4))}


def _inputs(seed, batch, dim, N, L, var_B, var_C):
    """u, delta, A, B, C, D, z, delta_bias in float64 (delta before softplus)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    A = -torch.rand(dim, N, generator=g, dtype=F64) * 3 - 0.1
    B = rnd(batch, N, L) if var_B else rnd(dim, N)
    C = rnd(batch, N, L) if var_C else rnd(dim, N)
    return [rnd(batch, dim, L), rnd(batch, dim, L) * 0.5, A, B, C, rnd(dim), rnd(batch, dim, L), rnd(dim) * 0.3]


def _grad_outs(seed, batch, dim, N, L):
    g = torch.Generator().manual_seed(seed + 1000)
    return [torch.randn(batch, dim, L, generator=g, dtype=F64), torch.randn(batch, dim, N, generator=g, dtype=F64)]


def _run(fn, inputs, grad_outs, dtype):
    """Outputs and input gradients of fn(inputs in ``dtype``) for <outputs, grad_outs>, as float64."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    outs = fn(*leaves)
    torch.autograd.backward(list(outs), [g.to(o.dtype) for g, o in zip(grad_outs, outs)])
    return [o.detach() for o in outs], [t.grad for t in leaves]


def _assert_same(fast, ref, dtype, names):
    (out_f, grads_f), (out_r, grads_r) = fast, ref
    fwd_tol, grad_tol = TOL[dtype]
    for name, a, b in zip(("y", "last state"), out_f, out_r):
        assert a.dtype == (dtype if name == "y" else dtype)
        torch.testing.assert_close(a.to(F64), b, **fwd_tol, msg=lambda m, n=name: f"{n}: {m}")
    for name, a, b in zip(names, grads_f, grads_r):
        assert a.dtype == dtype, f"gradient of {name} in {a.dtype}, not the input's {dtype}"
        torch.testing.assert_close(a.to(F64), b, **grad_tol, msg=lambda m, n=name: f"gradient of {n}: {m}")


def _core_ref(u, delta, A, B, C):
    return selective_scan_ref(u, delta, A, B, C, return_last_state=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L,steps", [(1, 5), (2, 1), (7, 5), (13, 5), (37, 4), (64, 64), (100, 1000)])
@pytest.mark.parametrize("var_B,var_C", [(True, True), (False, False), (True, False), (False, True)])
def test_core_matches_float64_reference(dtype, L, steps, var_B, var_C, monkeypatch):
    """Time blocks of ``steps`` steps (1: every step a block; more than L: one block; else a partial last one)."""
    batch, dim, N = 2, 6, 4
    monkeypatch.setattr(cpu_mod, "_BLOCK_BYTES", steps * batch * dim * N * torch.finfo(dtype).bits // 8)
    monkeypatch.setattr(cpu_mod, "_MIN_STEPS", 1)
    assert cpu_mod._block_steps(batch, dim, N, torch.finfo(dtype).bits // 8, L) == min(L, steps)
    u, delta, A, B, C, *_ = _inputs(L + 7 * var_B + 3 * var_C, batch, dim, N, L, var_B, var_C)
    delta = torch.nn.functional.softplus(delta)  # the core takes delta after bias and softplus
    inputs, grad_outs = [u, delta, A, B, C], _grad_outs(L, batch, dim, N, L)
    _assert_same(_run(selective_scan_cpu, inputs, grad_outs, dtype), _run(_core_ref, inputs, grad_outs, F64),
                 dtype, ["u", "delta", "A", "B", "C"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,L", [(0, 1), (1, 33), (2, 150)])
@pytest.mark.parametrize("var_B,var_C", [(True, True), (False, True)])
def test_torch_path_with_every_argument_matches_reference(dtype, seed, L, var_B, var_C, monkeypatch):
    """selective_scan_torch (this core plus bias, softplus, D, gate) with every argument given."""
    monkeypatch.setattr(cpu_mod, "_BLOCK_BYTES", 16 * 2 * 8 * 5 * torch.finfo(dtype).bits // 8)  # 16-step blocks
    inputs = _inputs(seed, 2, 8, 5, L, var_B, var_C)
    grad_outs = _grad_outs(seed, 2, 8, 5, L)

    def full(impl):
        return lambda *a: impl(*a, delta_softplus=True, return_last_state=True)

    _assert_same(_run(full(selective_scan_torch), inputs, grad_outs, dtype),
                 _run(full(selective_scan_ref), inputs, grad_outs, F64),
                 dtype, ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"])


@pytest.mark.parametrize("softplus", [True, False])
def test_torch_path_optional_arguments_off(softplus):
    u, delta, A, B, C, *_ = _inputs(5, 2, 4, 3, 29, True, False)
    delta = delta if softplus else delta.abs()
    y = selective_scan_torch(u, delta, A, B, C, delta_softplus=softplus)
    assert isinstance(y, torch.Tensor) and y.dtype == F64
    torch.testing.assert_close(y, selective_scan_ref(u, delta, A, B, C, delta_softplus=softplus),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_extreme_and_growing_decays_match_reference(seed):
    """delta up to 10 with A down to -100 (exp(delta A) underflows to 0), and negative delta
    without softplus (exp(delta A) > 1: the state grows): the plain recurrence, as the reference."""
    g = torch.Generator().manual_seed(seed)
    u, _, _, B, C, *_ = _inputs(seed, 2, 8, 4, 60, True, True)
    A = -torch.rand(8, 4, generator=g, dtype=F64) * 100
    delta = torch.rand(2, 8, 60, generator=g, dtype=F64) * 10
    delta[:, :, ::7] = 1e-3
    inputs, grad_outs = [u, delta, A, B, C], _grad_outs(seed, 2, 8, 4, 60)
    fast = _run(selective_scan_cpu, inputs, grad_outs, torch.float32)
    assert all(torch.isfinite(t).all() for t in fast[0] + fast[1])
    _assert_same(fast, _run(_core_ref, inputs, grad_outs, F64), torch.float32, ["u", "delta", "A", "B", "C"])
    growing = [u, -torch.rand(2, 8, 60, generator=g, dtype=F64) * 0.05, -torch.rand(8, 4, generator=g, dtype=F64),
               B, C]
    _assert_same(_run(selective_scan_cpu, growing, grad_outs, F64), _run(_core_ref, growing, grad_outs, F64),
                 F64, ["u", "delta", "A", "B", "C"])


def test_gradcheck_float64():
    u, delta, A, B, C, *_ = _inputs(3, 2, 3, 2, 9, True, False)
    inputs = [t.requires_grad_() for t in (u, torch.nn.functional.softplus(delta).detach(), A, B, C)]
    assert torch.autograd.gradcheck(selective_scan_cpu, inputs)


def test_gradient_through_last_state_only_and_non_contiguous_inputs(monkeypatch):
    """Only the last state is used (dy = 0 everywhere), and B / C are transposed views, as S6's projections give."""
    monkeypatch.setattr(cpu_mod, "_BLOCK_BYTES", 3 * 2 * 5 * 4 * 8)  # 3-step blocks
    monkeypatch.setattr(cpu_mod, "_MIN_STEPS", 1)
    u, delta, A, B, C, *_ = _inputs(9, 2, 5, 4, 20, True, True)
    B, C = B.transpose(1, 2).contiguous().transpose(1, 2), C.transpose(1, 2).contiguous().transpose(1, 2)
    assert not B.is_contiguous()
    delta = delta.abs()

    def last_only(*a):
        return (selective_scan_cpu(*a)[1],)

    grad_last = [torch.randn(2, 5, 4, dtype=F64)]
    ref = lambda *a: (selective_scan_ref(*a, return_last_state=True)[1],)  # noqa: E731
    out_f, grads_f = _run(last_only, [u, delta, A, B, C], grad_last, F64)
    out_r, grads_r = _run(ref, [u, delta, A, B, C], grad_last, F64)
    torch.testing.assert_close(out_f[0], out_r[0], rtol=1e-10, atol=1e-10)
    assert grads_r[4] is None  # C does not reach the last state: the reference has no gradient, ours is 0
    grads_r[4] = torch.zeros_like(C)
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch,dim,N,L", [(1, 1, 1, 1), (1, 1, 1, 5), (3, 1, 2, 4), (1, 2, 1, 17)])
@pytest.mark.parametrize("var_B", [True, False])
def test_degenerate_shapes_match_reference(batch, dim, N, L, var_B):
    """Size-1 batch, channel, state and time dimensions (where a transposed copy could be a view)."""
    inputs = _inputs(batch + dim + N + L, batch, dim, N, L, var_B, True)
    grad_outs = _grad_outs(L, batch, dim, N, L)

    def full(impl, **kw):
        return lambda *a: impl(*a, delta_softplus=True, **kw)

    _assert_same(_run(full(selective_scan_cpu), inputs, grad_outs, F64),
                 _run(full(selective_scan_ref, return_last_state=True), inputs, grad_outs, F64),
                 F64, ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"])


def test_block_length_bounds():
    """About _BLOCK_BYTES of state per block, never fewer than _MIN_STEPS steps (nor more than L)."""
    step = 8 * 128 * 16 * 4
    assert cpu_mod._block_steps(8, 128, 16, 4, 1024) == cpu_mod._BLOCK_BYTES // step
    assert cpu_mod._block_steps(64, 1024, 64, 8, 4096) == cpu_mod._MIN_STEPS
    assert cpu_mod._block_steps(8, 128, 16, 4, 3) == 3


@pytest.mark.parametrize("L", [1, 9])
def test_inputs_are_left_untouched(L):
    """The time-major copies are changed in place; the inputs (and the gradient of the output) never are."""
    inputs = [t.float() for t in _inputs(2, 1, 3, 2, L, True, True)]
    kept = [t.clone() for t in inputs]
    leaves = [t.requires_grad_() for t in inputs]
    y, last = selective_scan_cpu(*leaves, delta_softplus=True)
    dy = torch.randn_like(y)
    dy_kept = dy.clone()
    y.backward(dy)
    for a, b in zip(inputs + [dy], kept + [dy_kept]):
        assert torch.equal(a.detach(), b)


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        u, delta, A, B, C, *_ = _inputs(1, 2, 4, 3, 10, True, True)
        leaves = [t.float().requires_grad_() for t in (u, delta.abs(), A, B, C)]
        y, last = selective_scan_cpu(*leaves)
        assert torch.get_num_threads() == 2
        (y.sum() + last.sum()).backward()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_mixed_dtypes_are_refused():
    u, delta, A, B, C, *_ = _inputs(1, 2, 4, 3, 10, True, True)
    with pytest.raises(ValueError, match="one real floating dtype"):
        selective_scan_cpu(u.float(), delta, A, B, C)
