"""S4D / DSS Vandermonde kernel ``K[h, l] = 2 Re(sum_n C[h, n] exp(dtA[h, n] l))`` in Triton.

Design: the forward tiles (h, block of l) per program and loops over blocks of n, so the
(H, N, L) Vandermonde matrix is never materialised. ``exp(dtA l)`` is built from
``exp(Re(dtA) l)`` and ``cos / sin(Im(dtA) l)``. The backward tiles (h, block of n) and
loops over blocks of l, accumulating ``S0 = sum_l dK_l conj(E_l)`` and
``S1 = sum_l dK_l l conj(E_l)`` with ``E_l = exp(dtA l)``; then (PyTorch's conjugate
convention) ``dC = 2 S0`` and ``d dtA = 2 conj(C) S1``. Complex tensors are read and written
as interleaved float32 pairs. Numerics verified under ``TRITON_INTERPRET=1`` so far;
compiled for sm_80 / sm_90, without a GPU, by ``benchmarks/compile_kernels.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._first_order import first_order_backward

BLOCK_L = 64
MAX_BLOCK_N = 32
# Compile options of every launch, explicit rather than the installed triton's default: FP fusion
# (a*b+c as one FMA, rounded once) as CUDA and triton < 3.10 do by default; triton 3.10 turns
# the default off, which would change the kernels' rounding with the triton version.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


@triton.jit
def _powers(ar, ai, lf):
    """Real and imaginary parts of exp(dtA l) on the (n, l) tile."""
    mag = tl.exp(ar[:, None] * lf[None, :])
    phase = ai[:, None] * lf[None, :]
    return mag * tl.cos(phase), mag * tl.sin(phase)


@triton.jit
def _vandermonde_fwd_kernel(C_ptr, dtA_ptr, K_ptr, N, L, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    h = tl.program_id(0)
    offs_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = offs_l < L
    lf = tl.where(mask_l, offs_l, 0).to(tl.float32)  # padded columns use l = 0: no overflow
    acc = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        idx, mask_n = (h * N + offs_n) * 2, offs_n < N
        cr = tl.load(C_ptr + idx, mask=mask_n, other=0.0)
        ci = tl.load(C_ptr + idx + 1, mask=mask_n, other=0.0)
        er, ei = _powers(tl.load(dtA_ptr + idx, mask=mask_n, other=0.0),
                         tl.load(dtA_ptr + idx + 1, mask=mask_n, other=0.0), lf)
        acc += tl.sum(cr[:, None] * er - ci[:, None] * ei, axis=0)
    tl.store(K_ptr + h * L + offs_l, 2.0 * acc, mask=mask_l)


@triton.jit
def _vandermonde_bwd_kernel(C_ptr, dtA_ptr, dK_ptr, dC_ptr, ddtA_ptr, N, L,
                            BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    h = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    idx, mask_n = (h * N + offs_n) * 2, offs_n < N
    ar = tl.load(dtA_ptr + idx, mask=mask_n, other=0.0)
    ai = tl.load(dtA_ptr + idx + 1, mask=mask_n, other=0.0)
    s0r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s0i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s1r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s1i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        lf = tl.where(mask_l, offs_l, 0).to(tl.float32)
        g = tl.load(dK_ptr + h * L + offs_l, mask=mask_l, other=0.0)[None, :]
        er, ei = _powers(ar, ai, lf)
        s0r += tl.sum(g * er, axis=1)
        s0i -= tl.sum(g * ei, axis=1)
        s1r += tl.sum(g * lf[None, :] * er, axis=1)
        s1i -= tl.sum(g * lf[None, :] * ei, axis=1)
    cr = tl.load(C_ptr + idx, mask=mask_n, other=0.0)
    ci = tl.load(C_ptr + idx + 1, mask=mask_n, other=0.0)
    tl.store(dC_ptr + idx, 2.0 * s0r, mask=mask_n)
    tl.store(dC_ptr + idx + 1, 2.0 * s0i, mask=mask_n)
    tl.store(ddtA_ptr + idx, 2.0 * (cr * s1r + ci * s1i), mask=mask_n)
    tl.store(ddtA_ptr + idx + 1, 2.0 * (cr * s1i - ci * s1r), mask=mask_n)


def _c64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.complex64).contiguous()


class VandermondeFn(torch.autograd.Function):
    """Autograd wrapper; gradients for C and dtA (PyTorch's conjugate convention)."""

    @staticmethod
    def forward(ctx, C, dtA, L):
        H, N = C.shape
        Cf, Af = _c64(C), _c64(dtA)
        K = torch.empty(H, L, dtype=torch.float32, device=C.device)
        BLOCK_N = min(triton.next_power_of_2(N), MAX_BLOCK_N)
        _vandermonde_fwd_kernel[(H, triton.cdiv(L, BLOCK_L))](
            torch.view_as_real(Cf), torch.view_as_real(Af), K, N, L, BLOCK_N=BLOCK_N, BLOCK_L=BLOCK_L, **LAUNCH_OPTIONS)
        ctx.save_for_backward(Cf, Af)
        ctx.dtypes = (C.dtype, dtA.dtype)
        return K.to(C.real.dtype)

    @staticmethod
    @first_order_backward("vandermonde_kernel")  # the kernels build no graph: a second derivative is refused
    def backward(ctx, dK):
        Cf, Af = ctx.saved_tensors
        H, N = Cf.shape
        L = dK.shape[1]
        dC, ddtA = torch.empty_like(Cf), torch.empty_like(Af)
        BLOCK_N = min(triton.next_power_of_2(N), MAX_BLOCK_N)
        _vandermonde_bwd_kernel[(H, triton.cdiv(N, BLOCK_N))](
            torch.view_as_real(Cf), torch.view_as_real(Af), dK.detach().to(torch.float32).contiguous(),
            torch.view_as_real(dC), torch.view_as_real(ddtA), N, L, BLOCK_N=BLOCK_N, BLOCK_L=BLOCK_L, **LAUNCH_OPTIONS)
        return dC.to(ctx.dtypes[0]), ddtA.to(ctx.dtypes[1]), None


def vandermonde_fn(C, dtA, L):
    """Run the Triton Vandermonde kernel (inputs already validated by the caller)."""
    return VandermondeFn.apply(C, dtA, int(L))
