"""The SSD op's PyTorch path: Mamba-2's chunked state-space-duality algorithm in plain torch ops.

Per head (A a negative scalar, state h of shape (headdim, dstate)):

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   h_{-1} = 0;   y_t = h_t C_t

The sequence is cut into chunks of Q steps. With a_t = dt_t A and s_i the cumulative sum of a
inside the chunk (s_i = a_1 + ... + a_i), the state of step i is

    h_i = exp(s_i) h_in + sum_{j <= i} exp(s_i - s_j) dt_j x_j B_j^T

so within a chunk the output is an attention-like product with the causal "segment-sum" decay
matrix Lmat[i, j] = exp(s_i - s_j) (j <= i, else 0):

    y_i = sum_j (C_i . B_j) Lmat[i, j] dt_j x_j  +  exp(s_i) h_in C_i

and the chunk's end state exp(s_Q) h_in + sum_j exp(s_Q - s_j) dt_j x_j B_j^T is passed to the
next chunk by a sequential loop over chunks (L / Q small steps). Only differences s_i - s_j with
j <= i are exponentiated (the others are set to -inf first), so for A < 0 and dt >= 0 no factor
exceeds 1 and nothing overflows; the padding of a last partial chunk has dt = 0, x = B = C = 0,
which leaves every kept state unchanged.

Every step is a differentiable torch op with no ``out=`` and no in-place update of a saved
tensor, so autograd's double backward works (Jacobian regularisation needs it). The B / C groups
are never repeated per head: heads are viewed as (ngroups, heads per group) and contracted per group.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Bytes of (Q, Q) score matrices handled at once by the diagonal blocks: small enough that the few
# elementwise passes over them (decays, scores, their gradients) and the matmul that reads them
# run in cache rather than from memory.
_BLOCK_BYTES = 2 << 20
# Rows of a chunk's (Q, Q) scores made at once: a row block i0:i1 needs columns 0:i1 only (the
# scores are causal), so with Q = 4 row blocks 10 of the 16 (Q/4)^2 tiles are made, not 16.
_ROWS = 64


def _blocks(n, per_item_bytes):
    """Slices of range(n) holding about ``_BLOCK_BYTES`` each (at least one item)."""
    step = max(1, _BLOCK_BYTES // max(1, per_item_bytes))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _tiles(s_q):
    """(chunk slice, row start, row end) of every causal tile of the scores of ``s_q`` (N, g, r, Q)."""
    g, r, Q = s_q.shape[1:]
    return [(blk, i0, min(Q, i0 + _ROWS)) for blk in _blocks(s_q.shape[0], g * r * Q * min(Q, _ROWS) * 4)
            for i0 in range(0, Q, _ROWS)]


def _tile_scores(s_q, CB, i0, i1):
    """(decays, scores) of rows i0:i1 and columns 0:i1: exp(s_i - s_j) (0 for j > i) and CB times it."""
    seg = s_q[..., i0:i1, None] - s_q[..., None, :i1]
    above = torch.ones(i1 - i0, i1, dtype=torch.bool, device=s_q.device).triu(i0 + 1)
    seg = seg.masked_fill_(above, float("-inf")).exp_()
    return seg, seg * CB[..., i0:i1, :i1].unsqueeze(-3)


class _DiagonalBlocks(torch.autograd.Function):
    """y_i = sum_{j <= i} (C_i . B_j) exp(s_i - s_j) u_j within each chunk: the quadratic part.

    s_q (N, g, r, Q) decay exponents, CB (N, g, Q, Q) = C_i . B_j per group, u (N, g, r, Q, p)
    = dt_j x_j, for N = batch x chunks; y (N, g, r, Q, p). The decays and scores are made a
    cache-sized tile at a time (rows i0:i1 of a few chunks, columns 0:i1: the zero tiles above the
    diagonal are skipped) and never kept: the backward makes them again (passes in cache instead of
    big tensors in memory) and then needs two matmuls and a few passes per tile: dM = dy u^T,
    du = M^T dy, d(s_i - s_j) = dM M, dCB = sum over the group's heads of dM exp(s_i - s_j), for
    M = CB exp(s_i - s_j). When the backward itself is differentiated (``create_graph``: double
    backward) it runs on whole chunks with out-of-place ops, so autograd can follow it.
    """

    @staticmethod
    def forward(ctx, s_q, CB, u):
        ctx.save_for_backward(s_q, CB, u)
        y = u.new_empty(u.shape)
        for blk, i0, i1 in _tiles(s_q):
            _, scores = _tile_scores(s_q[blk], CB[blk], i0, i1)
            y[blk, :, :, i0:i1] = torch.matmul(scores, u[blk, :, :, :i1])
        return y

    @staticmethod
    def backward(ctx, dy):
        s_q, CB, u = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: out-of-place ops on the whole, for autograd to follow
            return _differentiable_grads(s_q, CB, u, dy)
        ds, dCB, du = torch.zeros_like(s_q), torch.zeros_like(CB), torch.zeros_like(u)
        for blk, i0, i1 in _tiles(s_q):
            seg, scores = _tile_scores(s_q[blk], CB[blk], i0, i1)
            dy_rows = dy[blk, :, :, i0:i1]
            d_scores = torch.matmul(dy_rows, u[blk, :, :, :i1].transpose(-1, -2))
            du[blk, :, :, :i1] += torch.matmul(scores.transpose(-1, -2), dy_rows)
            d_diff = scores.mul_(d_scores)  # d loss / d (s_i - s_j)
            ds[blk, :, :, i0:i1] += d_diff.sum(-1)
            ds[blk, :, :, :i1] -= d_diff.sum(-2)
            dCB[blk, :, i0:i1, :i1] = seg.mul_(d_scores).sum(-3)
        return ds, dCB, du


def _differentiable_grads(s_q, CB, u, dy):
    """(ds, dCB, du) of ``_DiagonalBlocks`` with out-of-place ops on whole chunks (see there)."""
    Q = s_q.shape[-1]
    above = torch.ones(Q, Q, dtype=torch.bool, device=s_q.device).triu(1)
    seg = torch.where(above, float("-inf"), s_q[..., :, None] - s_q[..., None, :]).exp()
    scores = seg * CB.unsqueeze(-3)
    d_scores = torch.matmul(dy, u.transpose(-1, -2))
    d_diff = d_scores * scores
    return (d_diff.sum(-1) - d_diff.sum(-2), (d_scores * seg).sum(-3),
            torch.matmul(scores.transpose(-1, -2), dy))


def ssd_chunked(x, dt, A, B, C, chunk_size):
    """y (batch, L, nheads, headdim) of the SSD recurrence without D / gate, in the inputs' dtype.

    x: (batch, L, nheads, headdim); dt: (batch, L, nheads), already biased / softplus-ed / clamped;
    A: (nheads,); B, C: (batch, L, ngroups, dstate); all of one floating dtype (the caller casts).

    Example:
        >>> x, dt = torch.randn(2, 10, 4, 3), torch.rand(2, 10, 4)
        >>> A, B, C = -torch.rand(4), torch.randn(2, 10, 2, 5), torch.randn(2, 10, 2, 5)
        >>> ssd_chunked(x, dt, A, B, C, chunk_size=4).shape
        torch.Size([2, 10, 4, 3])
    """
    batch, L, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    r = nheads // ngroups  # heads per group: head h uses group h // r
    Q = max(1, min(chunk_size, L))  # a chunk longer than the sequence only adds padding
    nchunks = -(-L // Q)
    pad = nchunks * Q - L
    if pad:  # identity steps at the end: dt = 0 (no decay, no input), x = B = C = 0
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    # chunk-major layouts: (b, c, g, r, Q, p) for the inputs, (b, c, g, Q, n) for B and C
    u = (x * dt[..., None]).reshape(batch, nchunks, Q, ngroups, r, headdim).permute(0, 1, 3, 4, 2, 5)
    u = u.contiguous()  # dt_j x_j: the input term, folded in once (not into the (Q, Q) scores)
    B = B.reshape(batch, nchunks, Q, ngroups, dstate).transpose(2, 3)
    C = C.reshape(batch, nchunks, Q, ngroups, dstate).transpose(2, 3)
    a = (dt * A).reshape(batch, nchunks, Q, ngroups, r).permute(0, 1, 3, 4, 2)  # (b, c, g, r, Q)
    s = torch.cumsum(a, dim=-1)  # decay exponents from the chunk start
    s_last = s[..., -1:]  # (b, c, g, r, 1)

    # intra-chunk (diagonal blocks): (C_i . B_j) exp(s_i - s_j) u_j, causal
    CB = torch.matmul(C, B.transpose(-1, -2))  # (b, c, g, Q, Q): C_i . B_j per group
    y = _DiagonalBlocks.apply(s.reshape(-1, ngroups, r, Q), CB.reshape(-1, ngroups, Q, Q),
                              u.view(-1, ngroups, r, Q, headdim)).view(u.shape)  # (b, c, g, r, Q, p)

    # each chunk's own end state from its inputs: sum_j exp(s_Q - s_j) u_j B_j^T -> (b, c, g, r, p, n)
    chunk_states = torch.matmul((u * torch.exp(s_last - s)[..., None]).transpose(-1, -2), B.unsqueeze(3))

    # states entering each chunk: a sequential loop over chunks
    decay = torch.exp(s_last)[..., None]  # (b, c, g, r, 1, 1)
    h = torch.zeros_like(chunk_states[:, 0])
    entering = []
    for c in range(nchunks):
        entering.append(h)
        h = decay[:, c] * h + chunk_states[:, c]
    h_in = torch.stack(entering, dim=1)  # (b, c, g, r, p, n)

    # inter-chunk (off-diagonal): exp(s_i) C_i h_in^T
    y = y + torch.matmul(C.unsqueeze(3), h_in.transpose(-1, -2)) * torch.exp(s)[..., None]
    return y.permute(0, 1, 4, 2, 3, 5).reshape(batch, nchunks * Q, nheads, headdim)[:, :L]
