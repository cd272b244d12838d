"""Diagonal linear recurrence ``h_t = a_t h_{t-1} + b_t`` as a Triton kernel, real or complex.

Design: the leading dims are flattened into rows; one program owns ``BLOCK_R`` rows and
walks time with a sequential ``for`` loop, the state in registers. Complex tensors are
read as interleaved (real, imag) float32 pairs (``torch.view_as_real``) and multiplied out
by hand. The same kernel runs the backward: with ``REVERSE`` it walks time backwards and
computes the adjoint ``lam_t = dh_t + conj(a_{t+1}) lam_{t+1}``; the gradients
``db = lam``, ``da = lam conj(h_{t-1})`` and ``dh0 = conj(a_0) lam_0`` are then plain
elementwise torch ops, reduced to the broadcast shapes of a and h0.

A time-invariant ``a`` (last dim 1, as for S5 and Mega's EMA) is passed as one value per row
and loaded once (``A_PER_ROW``); otherwise it is expanded to b's shape. fp32 / complex64
compute. Numerics verified under ``TRITON_INTERPRET=1`` so far; compiled for sm_80 / sm_90, without a GPU, by
``benchmarks/compile_kernels.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._first_order import first_order_backward

MAX_BLOCK_R = 64  # rows per program
# Compile options of every launch, explicit rather than the installed triton's default: FP fusion
# (a*b+c as one FMA, rounded once) as CUDA and triton < 3.10 do by default; triton 3.10 turns
# the default off, which would change the kernels' rounding with the triton version.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


@triton.jit
def _diag_scan_kernel(a_ptr, b_ptr, h0_ptr, out_ptr, R, L,
                      HAS_H0: tl.constexpr, IS_COMPLEX: tl.constexpr, REVERSE: tl.constexpr,
                      A_PER_ROW: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < R
    ELEM: tl.constexpr = 2 if IS_COMPLEX else 1  # floats per element
    hr = tl.zeros((BLOCK_R,), dtype=tl.float32)
    hi = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if HAS_H0:
        hr = tl.load(h0_ptr + rows * ELEM, mask=mask_r, other=0.0)
        if IS_COMPLEX:
            hi = tl.load(h0_ptr + rows * ELEM + 1, mask=mask_r, other=0.0)
    a_row_r = tl.zeros((BLOCK_R,), dtype=tl.float32)
    a_row_i = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if A_PER_ROW:
        a_row_r = tl.load(a_ptr + rows * ELEM, mask=mask_r, other=0.0)
        if IS_COMPLEX:
            a_row_i = tl.load(a_ptr + rows * ELEM + 1, mask=mask_r, other=0.0)
    for i in range(L):
        if REVERSE:  # adjoint: lam_t = dh_t + conj(a_{t+1}) lam_{t+1}
            t = L - 1 - i
            t_a = t + 1
        else:
            t = i
            t_a = t
        m_a = mask_r & (rows * 0 + t_a < L)
        idx = (rows * L + t) * ELEM
        if A_PER_ROW:
            ar = tl.where(m_a, a_row_r, 0.0)
            ai = tl.where(m_a, a_row_i, 0.0)
        else:
            idx_a = (rows * L + t_a) * ELEM
            ar = tl.load(a_ptr + idx_a, mask=m_a, other=0.0)
            ai = tl.zeros((BLOCK_R,), dtype=tl.float32)
            if IS_COMPLEX:
                ai = tl.load(a_ptr + idx_a + 1, mask=m_a, other=0.0)
        br = tl.load(b_ptr + idx, mask=mask_r, other=0.0)
        if IS_COMPLEX:
            if REVERSE:
                ai = -ai
            bi = tl.load(b_ptr + idx + 1, mask=mask_r, other=0.0)
            hr, hi = ar * hr - ai * hi + br, ar * hi + ai * hr + bi
            tl.store(out_ptr + idx + 1, hi, mask=mask_r)
        else:
            hr = ar * hr + br
        tl.store(out_ptr + idx, hr, mask=mask_r)


def _run(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """b: (R, L) contiguous; a: (R, L), or (R, 1) when time-invariant; same dtype, float32 or
    complex64; h0: (R,) or None."""
    R, L = b.shape
    is_complex = b.is_complex()
    as_float = torch.view_as_real if is_complex else (lambda t: t)
    out = torch.empty_like(b)
    BLOCK_R = min(triton.next_power_of_2(R), MAX_BLOCK_R)
    _diag_scan_kernel[(triton.cdiv(R, BLOCK_R),)](
        as_float(a), as_float(b), as_float(h0) if h0 is not None else as_float(b), as_float(out), R, L,
        HAS_H0=h0 is not None, IS_COMPLEX=is_complex, REVERSE=reverse, A_PER_ROW=a.shape[1] == 1,
        BLOCK_R=BLOCK_R, **LAUNCH_OPTIONS)
    return out


def _grad_to(grad: torch.Tensor, meta: tuple[torch.Size, torch.dtype]) -> torch.Tensor:
    """Sum a broadcast gradient back to the input's (shape, dtype); real inputs get the real part."""
    shape, dtype = meta
    grad = grad.sum_to_size(shape)
    return (grad if dtype.is_complex else grad.real).to(dtype)


class DiagScanFn(torch.autograd.Function):
    """Autograd wrapper; gradients for a, b and h0 (PyTorch's conjugate convention for complex)."""

    @staticmethod
    def forward(ctx, a, b, h0):
        work = torch.complex64 if (a.is_complex() or b.is_complex()) else torch.float32
        out_dtype = torch.result_type(a, b)
        shape = b.shape
        a_shape = shape[:-1] + (1,) if a.shape[-1:] == (1,) else shape  # keep a time-invariant a per row
        af = a.detach().to(work).expand(a_shape).reshape(-1, a_shape[-1]).contiguous()
        bf = b.detach().to(work).reshape(-1, shape[-1]).contiguous()
        h0f = None if h0 is None else h0.detach().to(work).expand(shape[:-1]).reshape(-1).contiguous()
        h = _run(af, bf, h0f, reverse=False)
        ctx.save_for_backward(af, h, h0f if h0f is not None else h[:, 0])
        ctx.meta = [None if t is None else (t.shape, t.dtype) for t in (a, b, h0)]
        return h.reshape(shape).to(out_dtype)

    @staticmethod
    @first_order_backward("diag_scan")  # the kernels build no graph: a second derivative is refused
    def backward(ctx, dh):
        af, h, h0f = ctx.saved_tensors
        a_meta, b_meta, h0_meta = ctx.meta
        shape, has_h0 = b_meta[0], h0_meta is not None
        lam = _run(af, dh.to(h.dtype).reshape(h.shape).contiguous(), None, reverse=True)
        h_prev = torch.cat([(h0f if has_h0 else torch.zeros_like(h0f))[:, None], h[:, :-1]], dim=1)
        da = (lam * h_prev.conj()).reshape(shape)  # sum_to_size folds the time dim for a per-row a
        dh0 = _grad_to((lam[:, 0] * af[:, 0].conj()).reshape(shape[:-1]), h0_meta) if has_h0 else None
        return _grad_to(da, a_meta), _grad_to(lam.reshape(shape), b_meta), dh0


def diag_scan_fn(a, b, h0=None):
    """Run the Triton diagonal scan (inputs already validated by the caller)."""
    return DiagScanFn.apply(a, b, h0)
