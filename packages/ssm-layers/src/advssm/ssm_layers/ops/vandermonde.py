"""The S4D / DSS convolution kernel: K[h, l] = 2 Re(sum_n C[h, n] exp(dtA[h, n] l)).

C: (H, N) complex (already discretised, e.g. C (exp(dtA) - 1) / A for ZOH);
dtA: (H, N) complex. Returns K: (H, L) real.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_backend


def _check(C, dtA, L):
    if C.dim() != 2 or C.shape != dtA.shape:
        raise ValueError(f"vandermonde_kernel: C and dtA must both be (H, N), got {tuple(C.shape)} and {tuple(dtA.shape)}")
    if not (C.is_complex() and dtA.is_complex()):
        raise ValueError("vandermonde_kernel: C and dtA must be complex tensors")
    if int(L) < 1:
        raise ValueError(f"vandermonde_kernel: L must be >= 1, got {L}")


def vandermonde_kernel_ref(C, dtA, L):
    """Loop over l: the reference."""
    _check(C, dtA, L)
    cols = [2 * (C * torch.exp(dtA * l)).sum(-1).real for l in range(int(L))]
    return torch.stack(cols, dim=-1)


def vandermonde_kernel_torch(C, dtA, L):
    """Vectorised over l (placeholder: one (H, N, L) tensor)."""
    l = torch.arange(int(L), device=C.device, dtype=C.real.dtype)
    return 2 * torch.einsum("hn,hnl->hl", C, torch.exp(dtA[..., None] * l)).real


def vandermonde_kernel(C, dtA, L, backend="auto"):
    _check(C, dtA, L)
    backend = resolve_backend(backend, C)
    if backend == "reference":
        return vandermonde_kernel_ref(C, dtA, L)
    if backend == "triton":
        from .triton import vandermonde_triton

        return vandermonde_triton(C, dtA, L)
    return vandermonde_kernel_torch(C, dtA, L)
