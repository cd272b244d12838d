"""The S4D / DSS convolution kernel: K[h, l] = 2 Re(sum_n C[h, n] exp(dtA[h, n] l)).

C: (H, N) complex (already discretised, e.g. C (exp(dtA) - 1) / A for ZOH);
dtA: (H, N) complex. Returns K: (H, L) real.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ._dispatch import Op, dispatch


def _check(C, dtA, L):
    if C.dim() != 2 or C.shape != dtA.shape:
        raise ValueError(
            f"vandermonde_kernel: C and dtA must both be (H, N), got {tuple(C.shape)} and {tuple(dtA.shape)}"
        )
    if not (C.is_complex() and dtA.is_complex()):
        raise ValueError("vandermonde_kernel: C and dtA must be complex tensors")
    if int(L) < 1:
        raise ValueError(f"vandermonde_kernel: L must be >= 1, got {L}")


def vandermonde_kernel_ref(C, dtA, L):
    """Loop over l: the reference."""
    _check(C, dtA, L)
    cols = [2 * (C * torch.exp(dtA * l)).sum(-1).real for l in range(int(L))]
    return torch.stack(cols, dim=-1)


# Largest (H, N, chunk) complex tensor the fast path makes, in bytes.
_MAX_CHUNK_BYTES = 64 * 2**20


def _kernel_columns(C, dtA, l):
    return 2 * torch.einsum("hn,hnl->hl", C, torch.exp(dtA[..., None] * l)).real


def vandermonde_kernel_torch(C, dtA, L):
    """Vectorised over l in chunks, so no (H, N, chunk) complex tensor exceeds ``_MAX_CHUNK_BYTES``.

    Under autograd each chunk is checkpointed (its powers recomputed in backward), so the memory
    held for backward is bounded too.
    """
    _check(C, dtA, L)
    L = int(L)
    H, N = C.shape
    chunk = max(1, min(L, _MAX_CHUNK_BYTES // max(1, H * N * C.element_size())))
    l = torch.arange(L, device=C.device, dtype=C.real.dtype)
    if chunk >= L:
        return _kernel_columns(C, dtA, l)
    grad = torch.is_grad_enabled() and (C.requires_grad or dtA.requires_grad)
    cols = [
        checkpoint(_kernel_columns, C, dtA, part, use_reentrant=False) if grad else _kernel_columns(C, dtA, part)
        for part in l.split(chunk)
    ]
    return torch.cat(cols, dim=-1)


def _example(args, gen):
    """A small input for the first-use check (same dtypes, device): up to 4 x 40 modes, 130 columns
    (several blocks of l and of n), S4D-like decays and frequencies."""
    C, dtA, L = args
    H, N, L = min(C.shape[0], 4), min(C.shape[1], 40), min(int(L), 130)
    c = torch.complex(torch.randn(H, N, generator=gen), torch.randn(H, N, generator=gen))
    a = torch.complex(-torch.rand(H, N, generator=gen) * 0.1, torch.randn(H, N, generator=gen) * 0.5)
    return c.to(device=C.device, dtype=C.dtype), a.to(device=dtA.device, dtype=dtA.dtype), L


VANDERMONDE_KERNEL = Op("vandermonde_kernel", _check, vandermonde_kernel_ref, vandermonde_kernel_torch,
                        kernel="vandermonde:vandermonde_fn", example=_example,
                        # the kernel's tile (ops/triton/vandermonde.py): min(pow2(N), 32) modes per block
                        shape_class=lambda C, dtA, L: (min(1 << max(0, C.shape[1] - 1).bit_length(), 32),))


def vandermonde_kernel(C, dtA, L, backend="auto"):
    """K[h, l] = 2 Re(sum_n C[h, n] exp(dtA[h, n] l)) for l < L: (H, L) real.

        K = vandermonde_kernel(C, dtA, 1024)   # (H, 1024) real

    Args:
        C: (H, N) complex, already discretised.
        dtA: (H, N) complex, the discretised state matrix's diagonal.
        L: kernel length (>= 1).
        backend: "auto", "torch", "triton" or "reference".
    """
    return dispatch(VANDERMONDE_KERNEL, backend, C, dtA, L)
