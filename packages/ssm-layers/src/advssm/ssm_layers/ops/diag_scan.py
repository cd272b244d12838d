"""Diagonal linear recurrence along the last dimension (S5's state, Mega's EMA).

    h_t = a_t * h_{t-1} + b_t,   h_{-1} = h0 (zeros by default)

b: (..., L), real or complex; a broadcastable to b (e.g. (P, 1) for a time-invariant
diagonal, or b's full shape for an input-dependent one); h0 broadcastable to b[..., 0].
Returns every state h, shaped like b.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_backend


def _check(a, b, h0):
    if b.dim() < 1:
        raise ValueError("diag_scan: b must have a time dimension (last)")
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"diag_scan: a {tuple(a.shape)} does not broadcast to b {tuple(b.shape)}") from None
    if torch.broadcast_shapes(a.shape, b.shape) != b.shape:
        raise ValueError(f"diag_scan: a {tuple(a.shape)} must broadcast to b's shape {tuple(b.shape)}, not beyond it")
    if h0 is not None and torch.broadcast_shapes(h0.shape, b.shape[:-1]) != b.shape[:-1]:
        raise ValueError(f"diag_scan: h0 {tuple(h0.shape)} must broadcast to {tuple(b.shape[:-1])}")


def diag_scan_ref(a, b, h0=None):
    """Sequential loop over time: the reference."""
    _check(a, b, h0)
    a = a.expand_as(b) if a.shape != b.shape else a
    h = torch.zeros_like(b[..., 0]) if h0 is None else h0.to(b.dtype).expand_as(b[..., 0])
    hs = []
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        hs.append(h)
    return torch.stack(hs, dim=-1)


def diag_scan_torch(a, b, h0=None):
    """Fast PyTorch path. Placeholder: the reference."""
    return diag_scan_ref(a, b, h0)


def diag_scan(a, b, h0=None, backend="auto"):
    _check(a, b, h0)
    backend = resolve_backend(backend, b)
    if backend == "reference":
        return diag_scan_ref(a, b, h0)
    if backend == "triton":
        from .triton import diag_scan_triton

        return diag_scan_triton(a, b, h0)
    return diag_scan_torch(a, b, h0)
