"""Every op's fast PyTorch path against its sequential float64 reference: forward and gradients.

Tolerances: fp32 against the float64 reference, rtol 6e-4 / atol 2e-3 forward and twice that
for gradients (mamba_ssm's); float64 paths against the reference to 1e-10; gradcheck in float64.
"""
import importlib

import pytest
import torch
from advssm.ssm_layers.ops import fft_conv, fft_conv_ref
from advssm.ssm_layers.ops.diag_scan import diag_scan_ref, diag_scan_torch
from advssm.ssm_layers.ops.selective_scan import selective_scan_ref, selective_scan_torch
from advssm.ssm_layers.ops.vandermonde import vandermonde_kernel_ref, vandermonde_kernel_torch

# the modules themselves (the package's attributes of the same names are the op functions)
ss_cpu_mod = importlib.import_module("advssm.ssm_layers.ops._selective_scan_cpu")  # the torch path's core
diag_mod = importlib.import_module("advssm.ssm_layers.ops.diag_scan")
vm_mod = importlib.import_module("advssm.ssm_layers.ops.vandermonde")

F64 = torch.float64
FWD = dict(rtol=6e-4, atol=2e-3)
GRAD = dict(rtol=1.2e-3, atol=4e-3)


def _wide(t):
    """float64, or complex128 for complex tensors (a plain .to(float64) would drop the imaginary part)."""
    return t.to(torch.complex128 if t.is_complex() else F64)


def _grads(fn, inputs, grad_outs):
    """Gradients of <fn(inputs), grad_outs> w.r.t. every tensor input (float64 leaves)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward([_wide(o) for o in outs], grad_outs)
    return [_wide(o.detach()) for o in outs], [_wide(t.grad) for t in leaves]


def _assert_matches(fast, ref, inputs, grad_outs, fwd_tol, grad_tol, cast=torch.float32):
    """fast(inputs cast to ``cast``) against ref(inputs in float64): outputs and every input gradient."""
    out_f, grads_f = _grads(lambda *x: fast(*(t.to(cast) for t in x)), inputs, grad_outs)
    out_r, grads_r = _grads(ref, inputs, grad_outs)
    for a, b in zip(out_f, out_r):
        torch.testing.assert_close(a, b, **fwd_tol)
    for i, (a, b) in enumerate(zip(grads_f, grads_r)):
        torch.testing.assert_close(a, b, **grad_tol, msg=lambda m, i=i: f"gradient of input {i}: {m}")


# ---------------------------------------------------------------- selective scan

def _ss_inputs(seed, batch, dim, N, L, var_B, var_C, delta_scale=0.5, A_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    A = -torch.rand(dim, N, generator=g, dtype=F64) * A_scale
    B = rnd(batch, N, L) if var_B else rnd(dim, N)
    C = rnd(batch, N, L) if var_C else rnd(dim, N)
    return [rnd(batch, dim, L), rnd(batch, dim, L) * delta_scale, A, B, C, rnd(dim), rnd(batch, dim, L), rnd(dim)]


def _ss(impl, softplus=True):
    return lambda u, d, A, B, C, D, z, db: impl(u, d, A, B, C, D, z, db, delta_softplus=softplus,
                                                   return_last_state=True)


@pytest.mark.parametrize("var_B,var_C", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("L,blocked", [(1, False), (7, False), (13, True)])
def test_selective_scan_gradcheck(var_B, var_C, L, blocked, monkeypatch):
    if blocked:  # time blocks of 5 steps (the last one partial)
        monkeypatch.setattr(ss_cpu_mod, "_BLOCK_BYTES", 5 * 2 * 3 * 4 * 8)
        monkeypatch.setattr(ss_cpu_mod, "_MIN_STEPS", 1)
        assert ss_cpu_mod._block_steps(2, 3, 4, 8, L) == 5
    inputs = [t.requires_grad_() for t in _ss_inputs(L + 10 * var_B, 2, 3, 4, L, var_B, var_C)]
    assert torch.autograd.gradcheck(_ss(selective_scan_torch), inputs, fast_mode=True)


@pytest.mark.parametrize("seed,L", [(0, 1), (1, 64), (2, 100), (3, 257)])
@pytest.mark.parametrize("var_B,var_C", [(True, True), (False, False)])
def test_selective_scan_fp32_matches_float64_reference(seed, L, var_B, var_C, monkeypatch):
    # several time blocks of 48 steps with a partial last one
    monkeypatch.setattr(ss_cpu_mod, "_BLOCK_BYTES", 48 * 2 * 16 * 8 * 4)
    assert ss_cpu_mod._block_steps(2, 16, 8, 4, L) == min(L, 48)
    inputs = _ss_inputs(seed, 2, 16, 8, L, var_B, var_C)
    g = torch.Generator().manual_seed(seed + 100)
    grad_outs = [torch.randn(2, 16, L, generator=g, dtype=F64), torch.randn(2, 16, 8, generator=g, dtype=F64)]
    _assert_matches(_ss(selective_scan_torch), _ss(selective_scan_ref), inputs, grad_outs, FWD, GRAD)


@pytest.mark.parametrize("seed", [0, 1])
def test_selective_scan_float64_path_is_exact_and_options_off(seed):
    u, delta, A, B, C, *_ = _ss_inputs(seed, 2, 5, 3, 37, True, False)
    delta = delta.abs()  # no softplus: delta must be >= 0 itself
    out = selective_scan_torch(u, delta, A, B, C)
    assert out.dtype == F64
    torch.testing.assert_close(out, selective_scan_ref(u, delta, A, B, C), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_selective_scan_extreme_decay_stays_finite_and_exact(seed):
    """delta up to 10 and A down to -100: exp(delta A) ~ exp(-1000) underflows, nothing overflows."""
    inputs = _ss_inputs(seed, 2, 8, 4, 100, True, True, A_scale=100.0)
    g = torch.Generator().manual_seed(seed)
    delta = torch.rand(2, 8, 100, generator=g, dtype=F64) * 10
    delta[:, :, ::7] = 1e-3  # mix near-zero steps (slow decay) with huge ones
    inputs[1] = delta
    inputs[7] = inputs[7].abs()  # no softplus here: a negative bias would make delta < 0 and exp(delta A) explode
    grad_outs = [torch.randn(2, 8, 100, generator=g, dtype=F64), torch.randn(2, 8, 4, generator=g, dtype=F64)]
    fast = _ss(selective_scan_torch, softplus=False)
    out, grads = _grads(lambda *x: fast(*(t.float() for t in x)), inputs, grad_outs)
    assert all(torch.isfinite(t).all() for t in out + grads)
    _assert_matches(fast, _ss(selective_scan_ref, softplus=False), inputs, grad_outs, FWD, GRAD)


def test_selective_scan_keeps_input_dtype():
    u, delta, A, B, C, *_ = _ss_inputs(0, 1, 2, 3, 5, True, True)
    assert selective_scan_torch(u.half(), delta.float(), A.float(), B.float(), C.float()).dtype == torch.float16


@pytest.mark.parametrize("impl", [selective_scan_torch, selective_scan_ref])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_selective_scan_half_inputs_compute_in_fp32(impl, dtype):
    """Half inputs: output in u's dtype, last state in fp32 (mamba_ssm's), values those of fp32 compute."""
    args = _ss_inputs(3, 2, 4, 3, 40, True, True)
    low = [t.to(dtype) for t in args]
    y, last = _ss(impl)(*low)
    y32, last32 = _ss(selective_scan_ref)(*(t.float() for t in low))
    assert y.dtype == dtype and last.dtype == torch.float32
    torch.testing.assert_close(y, y32.to(dtype))
    torch.testing.assert_close(last, last32, rtol=1e-5, atol=1e-5)


def test_selective_scan_under_autocast_is_fp32_forward_and_backward():
    """Autocast would run the scan's einsums in bf16 (and then mix dtypes in backward): it is off inside."""
    args = [t.float() for t in _ss_inputs(4, 2, 4, 3, 40, True, True)]
    grad_out = torch.randn(2, 4, 40)
    ref_y, ref_grads = _grads(_ss(selective_scan_ref), args, [grad_out.double(), torch.zeros(2, 4, 3).double()])

    def under_autocast(*xs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _ss(selective_scan_torch)(*xs)

    y, grads = _grads(under_autocast, args, [grad_out.double(), torch.zeros(2, 4, 3).double()])
    torch.testing.assert_close(y[0], ref_y[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change,match", [
    (lambda a: a.__setitem__(0, a[0][0]), "u must be"),
    (lambda a: a.__setitem__(1, a[1][..., :-1]), "delta must"),
    (lambda a: a.__setitem__(2, a[2][:-1]), "A must be"),
    (lambda a: a.__setitem__(3, a[3][:, :-1]), "B must be"),
    (lambda a: a.__setitem__(4, a[4][..., :-1]), "C must be"),
    (lambda a: a.__setitem__(5, a[5][:-1]), "D must be"),
    (lambda a: a.__setitem__(6, a[6][:1]), "z must"),
    (lambda a: a.__setitem__(2, a[2].to(torch.complex128)), "complex A"),
])
def test_selective_scan_bad_input_raises(change, match):
    args = _ss_inputs(0, 2, 3, 4, 6, True, True)
    change(args)
    with pytest.raises(ValueError, match=match):
        selective_scan_torch(*args)


# ---------------------------------------------------------------- diag scan

def _diag_inputs(seed, shape, L, dtype, varying, with_h0):
    g = torch.Generator().manual_seed(seed)
    a_shape = (*shape, L) if varying else (*shape[1:], 1)  # time-varying, or invariant and broadcast over batch
    a = torch.rand(a_shape, generator=g, dtype=F64) * 0.98
    b = torch.randn(*shape, L, generator=g, dtype=F64)
    h0 = torch.randn(shape[1:], generator=g, dtype=F64) if with_h0 else None  # broadcast over batch
    if dtype.is_complex:
        a = a * torch.exp(1j * torch.randn(a_shape, generator=g, dtype=F64))
        b = b + 1j * torch.randn(*shape, L, generator=g, dtype=F64)
        h0 = h0 + 1j * torch.randn(shape[1:], generator=g, dtype=F64) if with_h0 else None
    return a, b, h0


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("varying,with_h0", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("L", [1, 9, 30])
def test_diag_scan_gradcheck(dtype, varying, with_h0, L):
    a, b, h0 = _diag_inputs(L, (2, 3), L, dtype, varying, with_h0)
    inputs = [t.requires_grad_() for t in (a, b, h0) if t is not None]
    fn = (lambda a, b, h0: diag_scan_torch(a, b, h0)) if with_h0 else (lambda a, b: diag_scan_torch(a, b))
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("seed,L", [(0, 1), (1, 7), (2, 64), (3, 100), (4, 257)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("varying", [True, False])
def test_diag_scan_fp32_matches_float64_reference(seed, L, dtype, varying):
    a, b, h0 = _diag_inputs(seed, (3, 5, 4), L, dtype, varying, True)
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(b.shape, generator=g, dtype=b.dtype)
    _assert_matches(diag_scan_torch, diag_scan_ref, [a, b, h0], [grad_out], FWD, GRAD, cast=dtype)


@pytest.mark.parametrize("chunk", [2, 3, 8])
def test_diag_scan_chunk_sizes_agree(chunk, monkeypatch):
    monkeypatch.setattr(diag_mod, "_CHUNK", chunk)
    a, b, h0 = _diag_inputs(chunk, (2, 3), 50, torch.complex128, True, True)
    torch.testing.assert_close(diag_scan_torch(a, b, h0), diag_scan_ref(a, b, h0), rtol=1e-10, atol=1e-10)


def test_diag_scan_reverse_is_the_flipped_forward_scan():
    a, b, h0 = _diag_inputs(5, (2, 3), 21, torch.float64, True, True)
    h0 = h0.expand(2, 3)
    backwards = diag_mod.linear_scan(a, b, h0, reverse=True)
    torch.testing.assert_close(backwards, diag_scan_ref(a.flip(-1), b.flip(-1), h0).flip(-1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("a_shape,b_shape,h0_shape,match", [
    ((3, 4), (2, 5), None, "does not broadcast"),
    ((7, 2, 5), (2, 5), None, "not beyond"),
    ((2, 1), (2, 5), (3,), "h0"),
])
def test_diag_scan_bad_input_raises(a_shape, b_shape, h0_shape, match):
    h0 = None if h0_shape is None else torch.zeros(h0_shape)
    with pytest.raises(ValueError, match=match):
        diag_scan_torch(torch.zeros(a_shape), torch.zeros(b_shape), h0)


# ---------------------------------------------------------------- Vandermonde kernel, FFT convolution

def _vm_inputs(seed, H, N, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    C = torch.complex(torch.randn(H, N, generator=g, dtype=F64), torch.randn(H, N, generator=g, dtype=F64))
    dtA = torch.complex(-torch.rand(H, N, generator=g, dtype=F64) * 0.2, torch.randn(H, N, generator=g, dtype=F64))
    return C.to(dtype), dtA.to(dtype)


@pytest.mark.parametrize("seed,L", [(0, 1), (1, 7), (2, 100), (3, 257)])
def test_vandermonde_matches_reference_in_chunks(seed, L, monkeypatch):
    parts = []
    columns = vm_mod._kernel_columns
    monkeypatch.setattr(vm_mod, "_MAX_CHUNK_BYTES", 6 * 4 * 16 * 10)  # 10 columns per chunk in complex128
    monkeypatch.setattr(vm_mod, "_kernel_columns", lambda C, dtA, l: parts.append(len(l)) or columns(C, dtA, l))
    C, dtA = _vm_inputs(seed, 6, 4)
    inputs = [t.requires_grad_() for t in (C, dtA)]
    assert torch.autograd.gradcheck(lambda c, d: vandermonde_kernel_torch(c, d, L), inputs, fast_mode=True)
    torch.testing.assert_close(vandermonde_kernel_torch(C, dtA, L), vandermonde_kernel_ref(C, dtA, L))
    assert max(parts) <= 10 and sum(parts[:1 + (L - 1) // 10]) == L


@pytest.mark.parametrize("seed", [0, 1])
def test_vandermonde_fp32_matches_float64_reference(seed):
    C, dtA = _vm_inputs(seed, 16, 8)
    grad_out = torch.randn(16, 300, generator=torch.Generator().manual_seed(seed), dtype=F64)
    _assert_matches(lambda c, d: vandermonde_kernel_torch(c, d, 300), lambda c, d: vandermonde_kernel_ref(c, d, 300),
                    [C, dtA], [grad_out], FWD, GRAD, cast=torch.complex64)


def test_vandermonde_bad_input_raises():
    C, dtA = _vm_inputs(0, 3, 2)
    with pytest.raises(ValueError, match="complex"):
        vandermonde_kernel_torch(C.real, dtA.real, 4)
    with pytest.raises(ValueError, match=r"\(H, N\)"):
        vandermonde_kernel_torch(C, dtA[:, :1], 4)
    with pytest.raises(ValueError, match="L must be"):
        vandermonde_kernel_torch(C, dtA, 0)


@pytest.mark.parametrize("seed,L,K_len", [(0, 1, 1), (1, 7, 7), (2, 100, 60), (3, 257, 300)])
def test_fft_conv_matches_reference(seed, L, K_len):
    g = torch.Generator().manual_seed(seed)
    u, K, D = (torch.randn(*s, generator=g, dtype=F64) for s in ((2, 3, L), (3, K_len), (3,)))
    grad_out = torch.randn(2, 3, L, generator=g, dtype=F64)
    _assert_matches(fft_conv, fft_conv_ref, [u, K, D], [grad_out], FWD, GRAD)
    _assert_matches(fft_conv, fft_conv_ref, [u, K, D], [grad_out], dict(rtol=1e-10, atol=1e-10),
                    dict(rtol=1e-10, atol=1e-10), cast=F64)


def test_fft_conv_bad_input_raises():
    with pytest.raises(ValueError, match="u must be"):
        fft_conv(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="K must be"):
        fft_conv(torch.zeros(1, 3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="D must be"):
        fft_conv(torch.zeros(1, 3, 4), torch.zeros(3, 4), torch.zeros(2))
