"""Diagonal linear recurrence along the last dimension (S5's state, Mega's EMA).

    h_t = a_t * h_{t-1} + b_t,   h_{-1} = h0 (zeros by default)

b: (..., L), real or complex; a broadcastable to b (e.g. (P, 1) for a time-invariant
diagonal, or b's full shape for an input-dependent one); h0 broadcastable to b[..., 0].
Returns every state h, shaped like b, in the promoted dtype of a and b (computed in fp32
or better).

The fast path is a Hillis-Steele (log-step) scan: ceil(log2 L) whole-tensor passes instead
of L tiny ones. It only ever multiplies the a's together, so it is as safe as the sequential
loop for |a| <= 1 (products underflow to zero, never overflow). ``linear_scan`` is shared
with the selective scan, which runs it forwards for the states and backwards for the adjoint.
"""
from __future__ import annotations

import torch

from ._dispatch import Op, dispatch


def _check(a, b, h0=None):
    if b.dim() < 1:
        raise ValueError("diag_scan: b must have a time dimension (last)")
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"diag_scan: a {tuple(a.shape)} does not broadcast to b {tuple(b.shape)}") from None
    if torch.broadcast_shapes(a.shape, b.shape) != b.shape:
        raise ValueError(f"diag_scan: a {tuple(a.shape)} must broadcast to b's shape {tuple(b.shape)}, not beyond it")
    if h0 is not None:
        try:
            fits = torch.broadcast_shapes(h0.shape, b.shape[:-1]) == b.shape[:-1]
        except RuntimeError:
            fits = False
        if not fits:
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


# Sub-chunk length of the two-level scan: log-step inside chunks of this length, then the same
# scan, recursively, over the chunk totals (1/_CHUNK of the data). Fewer whole-tensor passes
# than one flat log-step scan over L.
_CHUNK = 8


def _log_step_(a, h, reverse):
    """In-place Hillis-Steele scan over the last dim; leaves cumulative a-products in ``a``."""
    L = h.shape[-1]
    k = 1
    while k < L:
        n = L - k
        later = slice(0, n) if reverse else slice(k, L)  # the side the recurrence moves towards
        earlier = slice(k, L) if reverse else slice(0, n)
        h[..., later].add_(a[..., later] * h[..., earlier])
        a[..., later] = a[..., later] * a[..., earlier]
        k *= 2


def _padded_copy(x, pad, fill, reverse, nc, c):
    """A fresh (..., nc, c) copy of x, padded with the identity step (a=1, b=0) on the side where
    the recurrence ends, so the padding changes no state that is kept."""
    out = x.new_full(x.shape[:-1] + (nc * c,), fill)
    out[..., pad:].copy_(x) if reverse else out[..., : x.shape[-1]].copy_(x)
    return out.view(*x.shape[:-1], nc, c)


def _scan_last(a, b, h0, reverse):
    L = b.shape[-1]
    c = min(_CHUNK, L)
    nc = -(-L // c)
    pad = nc * c - L
    a, h = _padded_copy(a, pad, 1, reverse, nc, c), _padded_copy(b, pad, 0, reverse, nc, c)
    _log_step_(a, h, reverse)
    if nc > 1 or h0 is not None:
        # state entering each chunk: the previous chunk's final state, h0 for the first one
        first = h0.unsqueeze(-1) if h0 is not None else h.new_zeros(h.shape[:-2] + (1,))
        if nc > 1:
            end = 0 if reverse else -1
            totals = _scan_last(a[..., end], h[..., end], h0, reverse)
            first = torch.cat([totals[..., 1:], first], -1) if reverse else torch.cat([first, totals[..., :-1]], -1)
        h.add_(a * first.unsqueeze(-1))
    h = h.reshape(*b.shape[:-1], nc * c)
    return h[..., pad:] if reverse else h[..., :L]


def linear_scan(a, b, h0=None, dim=-1, reverse=False):
    """All states of h_t = a_t h_{t-1} + b_t along ``dim`` (no autograd; a broadcastable to b).

    With ``reverse`` the recurrence runs from the end: h_t = a_t h_{t+1} + b_t, h0 entering
    at the last step. The inputs are left untouched.
    """
    dim = dim % b.dim()
    a = a.expand(b.shape).movedim(dim, -1)
    h = _scan_last(a, b.movedim(dim, -1), h0, reverse)
    return h.movedim(-1, dim)


class _DiagScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):
        out_dtype = torch.promote_types(a.dtype, b.dtype)
        # half-precision states would drift over a long recurrence: compute in fp32 at least
        work = torch.promote_types(out_dtype, torch.float32)
        h0w = None if h0 is None else h0.to(b.dtype).to(work).expand(b.shape[:-1])
        h = linear_scan(a.to(work).expand(b.shape), b.to(work), h0w)
        out = h.to(out_dtype)
        # saved as the output when it is one: under create_graph the backward then sees it as a
        # function of the inputs, at no cost; a half-precision output is recomputed there instead
        ctx.h_is_output = out is h
        ctx.save_for_backward(a, b, h0, h)
        return out

    @staticmethod
    def backward(ctx, grad_h):
        a, b, h0, h = ctx.saved_tensors
        # With create_graph (grad mode on here) the backward is built from differentiable ops, the
        # scans from this Function itself, so it can be differentiated again; otherwise the
        # in-place scans run, with no graph to record.
        graph = torch.is_grad_enabled()
        if graph and not ctx.h_is_output:  # the states as a function of the inputs
            h = _DiagScan.apply(a, b, h0).to(h.dtype)
        a_full = a.to(h.dtype).expand(b.shape)
        # adjoint: g_t = grad_h_t + conj(a_{t+1}) g_{t+1}, run backwards in time
        a_next = torch.cat([a_full[..., 1:], torch.ones_like(a_full[..., :1])], dim=-1).conj()
        if graph:
            g = _DiagScan.apply(a_next.flip(-1), grad_h.to(h.dtype).flip(-1), None).flip(-1)
        else:
            g = linear_scan(a_next, grad_h.to(h.dtype), reverse=True)
        h_first = torch.zeros_like(h[..., :1])
        if h0 is not None:
            h_first = h0.to(b.dtype).to(h.dtype).expand(b.shape[:-1])[..., None]
        h_prev = torch.cat([h_first, h[..., :-1]], dim=-1)
        grad_a = _reduce_to(g * h_prev.conj(), a) if ctx.needs_input_grad[0] else None
        grad_b = _reduce_to(g, b) if ctx.needs_input_grad[1] else None
        grad_h0 = None
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = _reduce_to(g[..., 0] * a_full[..., 0].conj(), h0)
        return grad_a, grad_b, grad_h0


def _reduce_to(grad, like):
    """Sum a broadcast gradient back to ``like``'s shape and (real or complex) dtype."""
    grad = grad.sum_to_size(like.shape)
    if grad.is_complex() and not like.is_complex():
        grad = grad.real
    return grad.to(like.dtype)


def diag_scan_torch(a, b, h0=None):
    """Fast PyTorch path: log-step scan forwards, adjoint log-step scan backwards (differentiable
    again under ``create_graph``: the path ``double_backward()`` runs too)."""
    _check(a, b, h0)
    return _DiagScan.apply(a, b, h0)


def _time_invariant(a, b):
    return a.shape[-1:] == (1,) and b.shape[-1] > 1


def _shape_class(a, b, h0):
    """What the kernel specialises on: real or complex, a time-invariant ``a`` (one value per row), h0,
    and its tile (ops/triton/diag_scan.py: min(pow2(rows), 64) rows per program)."""
    rows = b.numel() // max(1, b.shape[-1])
    return (a.is_complex() or b.is_complex(), _time_invariant(a, b), h0 is not None,
            min(1 << max(0, rows - 1).bit_length(), 64))


def _example(args, gen):
    """A small input of the class of ``args`` (same dtypes, tile, device) for the first-use check: the
    rows flattened as the kernel sees them (70 when there are 64 or more: two programs of 64), up to
    37 steps, |a| < 1."""
    a, b, h0 = args
    rows, L = b.numel() // max(1, b.shape[-1]), min(b.shape[-1], 37)
    rows = 70 if rows >= 64 else rows
    a_shape = (rows, 1) if _time_invariant(a, b) else (rows, L)

    def draw(like, *shape):
        x = torch.randn(*shape, generator=gen)
        if like.is_complex():
            x = torch.complex(x, torch.randn(*shape, generator=gen))
        return x.to(device=like.device, dtype=like.dtype)

    decay = torch.rand(*a_shape, generator=gen) * 0.9 + 0.05
    if a.is_complex():
        decay = decay * torch.exp(1j * torch.randn(*a_shape, generator=gen))
    return decay.to(device=a.device, dtype=a.dtype), draw(b, rows, L), None if h0 is None else draw(h0, rows)


DIAG_SCAN = Op("diag_scan", _check, diag_scan_ref, diag_scan_torch, kernel="diag_scan:diag_scan_fn",
               shape_class=_shape_class, example=_example)


def diag_scan(a, b, h0=None, backend="auto"):
    """All states of h_t = a_t h_{t-1} + b_t over the last dimension (see the module docstring).

        h = diag_scan(torch.full((4, 1), 0.9), torch.randn(2, 4, 100))   # (2, 4, 100)

    Args:
        a: decay, broadcastable to ``b`` (time-invariant (..., 1) or time-varying).
        b: input, (..., L), real or complex.
        h0: initial state, broadcastable to ``b[..., 0]``; zeros when None.
        backend: "auto", "torch", "triton" or "reference".
    """
    return dispatch(DIAG_SCAN, backend, a, b, h0)
