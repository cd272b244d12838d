"""The SSD op's PyTorch path: Mamba-2's chunked state-space-duality algorithm in torch ops.

Per head (A a negative scalar, state h of shape (headdim, dstate)):

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   h_{-1} = 0;   y_t = h_t C_t

The sequence is cut into chunks of Q steps. With a_t = dt_t A and s_i the cumulative sum of a
inside the chunk (s_i = a_1 + ... + a_i), the state of step i is

    h_i = exp(s_i) h_in + sum_{j <= i} exp(s_i - s_j) dt_j x_j B_j^T

so within a chunk the output is an attention-like product with the causal "segment-sum" decay
matrix Lmat[i, j] = exp(s_i - s_j) (j <= i, else 0):

    y_i = sum_j (C_i . B_j) Lmat[i, j] dt_j x_j  +  exp(s_i) h_in C_i

and the chunk's end state exp(s_Q) h_in + sum_j exp(s_Q - s_j) dt_j x_j B_j^T is passed on to the
next chunk: all chunks' entering states at once, as a (chunks, chunks) product of each chunk's own
end state with the decays between chunks. Only differences s_i - s_j with
j <= i are exponentiated (the others are set to -inf first), so for A < 0 and dt >= 0 no factor
exceeds 1 and nothing overflows; the padding of a last partial chunk has dt = 0, x = B = C = 0,
which leaves every kept state unchanged.

The quadratic part (the (Q, Q) decays and scores, most of the cost) is one autograd Function,
``_DiagonalBlocks``, that makes them in cache-sized row tiles and never keeps them whole (where
every step decays, a tile's earlier columns go through a per-group matmul instead of per-head
elementwise work, see ``_ROWS``, and only the tiles' diagonal squares and factors are kept for the
backward, each at most u's size); the rest is plain differentiable torch ops, with the groups'
heads side by side in one matmul per group (B and C are never repeated per head). The Function's
backward is written by hand and, when it is itself differentiated (``create_graph=True``), runs
on whole chunks with out-of-place differentiable ops, so double backward works (Jacobian
regularisation needs it). Speed against the sequential reference and ``transformers``' Mamba-2:
``benchmarks/bench_ssd.py``, figures in docs/performance.md.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Bytes of (Q, Q) score matrices handled at once by the diagonal blocks: small enough that the few
# elementwise passes over them (decays, scores, their gradients) and the matmul that reads them
# run in cache rather than from memory.
_BLOCK_BYTES = 2 << 20
# Rows of a chunk's (Q, Q) scores made at once (a row tile i0:i1). Where every step decays
# (dt A <= 0), only the tile's columns i0:i1 are made elementwise; the columns 0:i0 go through
# exp(s_i - s_j) = exp(s_i - s_{i0}) exp(s_{i0} - s_j), both factors <= 1, so their part is
# exp(s_i - s_{i0}) (CB[i0:i1, :i0] @ (exp(s_{i0} - s_j) u_j)): one matmul per group (shared by its
# heads) and no (rows, columns) elementwise work per head. Otherwise (some step grows) the tile's
# columns 0:i1 are made elementwise.
_ROWS = 64


def _blocks(n, per_item_bytes):
    """Slices of range(n) holding about ``_BLOCK_BYTES`` each (at least one item)."""
    step = max(1, _BLOCK_BYTES // max(1, per_item_bytes))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _tiles(s_q):
    """(chunk slice, row start, row end) of every row tile of the scores of ``s_q`` (N, g, r, Q)."""
    g, r, Q = s_q.shape[1:]
    return [(blk, i0, min(Q, i0 + _ROWS)) for blk in _blocks(s_q.shape[0], g * r * Q * min(Q, _ROWS) * 4)
            for i0 in range(0, Q, _ROWS)]


def _exp_floor(dtype):
    """The least exponent whose exp is a normal number of ``dtype`` (about -87 for fp32)."""
    return math.log(torch.finfo(dtype).tiny)


def _tile_scores(s_q, CB, i0, i1, c0):
    """(decays, scores) of rows i0:i1 and columns c0:i1: exp(s_i - s_j) (0 for j > i) and CB times it,
    in CB's dtype. s_q is float64 and so are the differences, rounded once to CB's dtype: a small
    s_i - s_j (a decay near 1) keeps its precision however large s_i and s_j are. A causal decay
    below the least normal number (exp(-87) in fp32) is raised to it: subnormal floats make every
    CPU op that touches them many times slower, and the change (< 1.2e-38 per decay) is far below
    rounding."""
    seg = (s_q[..., i0:i1, None] - s_q[..., None, c0:i1]).to(CB.dtype).clamp_(min=_exp_floor(CB.dtype))
    above = torch.ones(i1 - i0, i1 - c0, dtype=torch.bool, device=s_q.device).triu(i0 - c0 + 1)
    seg = seg.masked_fill_(above, float("-inf")).exp_()
    return seg, seg * CB[..., i0:i1, c0:i1].unsqueeze(-3)


def _diagonal_decays(s_q, i0, i1, out):
    """exp(s_i - s_j) for rows and columns i0:i1 where every step decays, into ``out``: the same values
    as ``_tile_scores``'s decays below the diagonal, in fewer passes. The difference is written
    straight into ``dtype`` (one rounding), and clamped to [least normal exponent, 0] in one pass:
    j > i has s_i - s_j >= 0, so its decay becomes exp(0) = 1 instead of 0, and the causal mask is
    applied to the per-group CB tile (``_causal``) instead of to each head's decays."""
    rows = s_q[..., i0:i1]
    seg = torch.sub(rows[..., :, None], rows[..., None, :], out=out)
    return seg.clamp_(min=_exp_floor(out.dtype), max=0.0).exp_()


def _causal(CB_tile):
    """A square diagonal tile of CB with its entries above the diagonal (j > i) zero."""
    return CB_tile.tril()


def _earlier_columns(s_q, u, i0, i1):
    """The factors of the columns 0:i0 of row tile i0:i1 (decaying steps): e_i = exp(s_i - s_{i0}) (…, r, rows),
    w_j = exp(s_{i0} - s_j) (…, r, i0) and v = w_j u_j arranged per group as (…, g, i0, r p)."""
    N, g, r, _, p = u.shape
    dtype = u.dtype
    ref = s_q[..., i0:i0 + 1]
    e = torch.exp((s_q[..., i0:i1] - ref).to(dtype).clamp_(min=_exp_floor(dtype)))  # as in _tile_scores
    w = torch.exp((ref - s_q[..., :i0]).to(dtype).clamp_(min=_exp_floor(dtype)))
    v = u.new_empty(N, g, i0, r * p)  # written through a per-head view: one pass, no permuted copy
    torch.mul(u[..., :i0, :], w[..., None], out=_per_head(v, r))
    return e, w, v


def _per_head(t, r):
    """(…, g, rows, r p) -> (…, g, r, rows, p)."""
    N, g, rows, rp = t.shape
    return t.view(N, g, rows, r, rp // r).transpose(2, 3)


def _per_group(t):
    """(…, g, r, rows, p) -> (…, g, rows, r p), contiguous."""
    N, g, r, rows, p = t.shape
    return t.transpose(2, 3).reshape(N, g, rows, r * p)


def _all_decay(s_q):
    """Whether no step grows (every dt A <= 0): then the earlier columns of a tile can be factored."""
    return bool((s_q[..., 1:] <= s_q[..., :-1]).all())


class _DiagonalBlocks(torch.autograd.Function):
    """y_i = sum_{j <= i} (C_i . B_j) exp(s_i - s_j) u_j within each chunk: the quadratic part.

    s_q (N, g, r, Q) decay exponents (float64), CB (N, g, Q, Q) = C_i . B_j per group, u (N, g, r, Q, p)
    = dt_j x_j, for N = batch x chunks; y (N, g, r, Q, p). Made a cache-sized row tile at a time
    (rows i0:i1 of a few chunks; the zero columns past i1 are skipped, the columns before i0
    factored where every step decays, see ``_ROWS``), and nothing (Q, Q)-sized is kept. Where every
    step decays the forward keeps what the backward would otherwise make again at the cost of an
    elementwise pass or a matmul: each tile's diagonal-square decays, its factors (e, w, v) and the
    product CB[i, :i0] @ v (together about 3.5 times u at chunk 256, headdim 64; the (Q, Q) scores per
    head that a plain autograd graph keeps are 4 times u); otherwise the backward makes the tiles
    again. It differentiates them by hand: for the elementwise columns
    dM = dy u^T, du = M^T dy, d(s_i - s_j) = dM M, dCB = sum over the group's heads of
    dM exp(s_i - s_j), for M = CB exp(s_i - s_j); for the factored ones the same through the two
    factors and the per-group matmul. When the backward itself is differentiated (``create_graph``:
    double backward) it runs on whole chunks with out-of-place ops, so autograd can follow it.
    """

    @staticmethod
    def forward(ctx, s_q, CB, u):
        ctx.save_for_backward(s_q, CB, u)
        ctx.factor = factor = _all_decay(s_q)
        N, g, r, Q, p = u.shape
        y = u.new_empty(u.shape)
        # Kept for the backward where every step decays (each as large as u or less, against the
        # (Q, Q) scores per head a plain autograd graph keeps): the decays of each tile's diagonal
        # square (rows i0:i1, columns i0:i1), so the backward does not make them again, and the
        # factored columns' per-group product CB[i, :i0] @ v, a matmul as costly as the forward's
        # whole elementwise part, which the backward needs for the gradient of the e_i factors.
        ctx.seg = u.new_empty(N, g, r, Q, min(Q, _ROWS)) if factor else None
        ctx.t = u.new_empty(N, g, Q, r * p) if factor else None
        ctx.factors = []  # (e, w, v) of each tile with factored columns, in tile order (1.5 u in all)
        for blk, i0, i1 in _tiles(s_q):
            c0 = i0 if factor else 0
            if factor:
                seg = _diagonal_decays(s_q[blk], i0, i1, out=ctx.seg[blk, :, :, i0:i1, :i1 - i0])
                scores = seg * _causal(CB[blk, :, i0:i1, i0:i1]).unsqueeze(-3)
            else:
                seg, scores = _tile_scores(s_q[blk], CB[blk], i0, i1, c0)
            y_rows = torch.matmul(scores, u[blk, :, :, c0:i1])
            if c0 > 0:
                e, w, v = _earlier_columns(s_q[blk], u[blk], i0, i1)
                ctx.factors.append((e, w, v))
                t = torch.matmul(CB[blk, :, i0:i1, :i0], v, out=ctx.t[blk, :, i0:i1])
                y_rows.addcmul_(_per_head(t, r), e[..., None])
            y[blk, :, :, i0:i1] = y_rows
        return y

    @staticmethod
    def backward(ctx, dy):
        s_q, CB, u = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: out-of-place ops on the whole, for autograd to follow
            return _differentiable_grads(s_q, CB, u, dy)
        # du is not zero-filled: the tiles of a chunk come in row order and the columns i0:i1 are first
        # reached by tile i0 (earlier tiles reach only columns before their own end), which assigns them
        ds, dCB, du = torch.zeros_like(s_q), torch.zeros_like(CB), torch.empty_like(u)
        r = u.shape[2]
        factors = iter(ctx.factors)
        for blk, i0, i1 in _tiles(s_q):
            c0 = i0 if ctx.factor else 0
            if ctx.factor:  # the forward's decays (not changed in place: a retained graph may run again)
                seg = ctx.seg[blk, :, :, i0:i1, :i1 - i0]  # 1 above the diagonal, see _diagonal_decays
                scores = seg * _causal(CB[blk, :, i0:i1, i0:i1]).unsqueeze(-3)
            else:
                seg, scores = _tile_scores(s_q[blk], CB[blk], i0, i1, c0)
            dy_rows = dy[blk, :, :, i0:i1]
            d_scores = torch.matmul(dy_rows, u[blk, :, :, c0:i1].transpose(-1, -2))
            du_cols = torch.matmul(scores.transpose(-1, -2), dy_rows)  # columns c0:i1
            du[blk, :, :, c0:i0] += du_cols[..., :i0 - c0, :]
            du[blk, :, :, i0:i1] = du_cols[..., i0 - c0:, :]
            d_diff = scores.mul_(d_scores)  # d loss / d (s_i - s_j)
            ds[blk, :, :, i0:i1] += d_diff.sum(-1)
            ds[blk, :, :, c0:i1] -= d_diff.sum(-2)
            dCB[blk, :, i0:i1, c0:i1] = d_scores.mul_(seg).sum(-3)
            if ctx.factor:  # the decays are 1, not 0, above the diagonal, where CB is not used
                dCB[blk, :, i0:i1, i0:i1] = _causal(dCB[blk, :, i0:i1, i0:i1])
            if c0 > 0:  # y_i += e_i (CB[i, :i0] @ v)_i, v_j = w_j u_j
                e, w, v = next(factors)  # the forward's
                CB_rows = CB[blk, :, i0:i1, :i0]
                t = _per_head(ctx.t[blk, :, i0:i1], r)
                g_e = (dy_rows * t).sum(-1).mul_(e)  # d loss / d (s_i - s_{i0})
                d_t = dy_rows.new_empty(t.shape[:2] + (i1 - i0, t.shape[-1] * r))  # (…, g, rows, r p)
                torch.mul(dy_rows, e[..., None], out=_per_head(d_t, r))
                dCB[blk, :, i0:i1, :i0] = torch.matmul(d_t, v.transpose(-1, -2))
                d_v = _per_head(torch.matmul(CB_rows.transpose(-1, -2), d_t), r)  # (…, r, i0, p)
                du[blk, :, :, :i0].addcmul_(d_v, w[..., None])
                g_w = (d_v * u[blk, :, :, :i0]).sum(-1).mul_(w)  # d loss / d (s_{i0} - s_j)
                ds[blk, :, :, i0:i1] += g_e
                ds[blk, :, :, :i0] -= g_w
                ds[blk, :, :, i0] += g_w.sum(-1) - g_e.sum(-1)
        return ds, dCB, du


def _differentiable_grads(s_q, CB, u, dy):
    """(ds, dCB, du) of ``_DiagonalBlocks`` with out-of-place ops on whole chunks (see there)."""
    Q = s_q.shape[-1]
    above = torch.ones(Q, Q, dtype=torch.bool, device=s_q.device).triu(1)
    seg = torch.where(above, float("-inf"), (s_q[..., :, None] - s_q[..., None, :]).to(CB.dtype)).exp()
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
    # u = dt_j x_j, the input term, folded in once (not into the (Q, Q) scores): one pass straight
    # into the per-head layout, since with the (small) dt made contiguous in that layout first the
    # product's memory order follows it (no permuted copy of the large x)
    x_chunks = x.reshape(batch, nchunks, Q, ngroups, r, headdim)
    dt_chunks = dt.reshape(batch, nchunks, Q, ngroups, r)
    u = dt_chunks.permute(0, 1, 3, 4, 2).contiguous()[..., None] * x_chunks.permute(0, 1, 3, 4, 2, 5)
    B = B.reshape(batch, nchunks, Q, ngroups, dstate).transpose(2, 3)
    C = C.reshape(batch, nchunks, Q, ngroups, dstate).transpose(2, 3)
    a = (dt * A).reshape(batch, nchunks, Q, ngroups, r).permute(0, 1, 3, 4, 2)  # (b, c, g, r, Q)
    # decay exponents from the chunk start, summed in float64 (a small tensor): the decays are
    # exponentials of their differences, and an fp32 sum of hundreds of steps would carry an
    # error of |s| x 6e-8 into every one of them
    s = torch.cumsum(a.to(torch.float64), dim=-1)
    s_last = s[..., -1:]  # (b, c, g, r, 1)

    # intra-chunk (diagonal blocks): (C_i . B_j) exp(s_i - s_j) u_j, causal
    CB = torch.matmul(C, B.transpose(-1, -2))  # (b, c, g, Q, Q): C_i . B_j per group
    y = _DiagonalBlocks.apply(s.reshape(-1, ngroups, r, Q), CB.reshape(-1, ngroups, Q, Q),
                              u.view(-1, ngroups, r, Q, headdim)).view(u.shape)  # (b, c, g, r, Q, p)

    # each chunk's own end state from its inputs, sum_j exp(s_Q - s_j) u_j B_j^T, per group as one
    # (n, Q) @ (Q, r p) product: (b, c, g, n, r p), the group's heads side by side
    w = torch.exp(s_last - s).to(u.dtype)  # (b, c, g, r, Q)
    # (dt_j w_j) x_j in x's own layout (b, c, Q, g, r p), not u w_j: no transposed copy of u
    uw = (x_chunks * (dt_chunks * w.permute(0, 1, 4, 2, 3))[..., None]).view(batch, nchunks, Q, ngroups, r * headdim)
    uw = uw.transpose(2, 3)  # (b, c, g, Q, r p): a view (a copy in matmul only for several groups)
    chunk_states = torch.matmul(B.transpose(-1, -2), uw)

    # states entering each chunk: h_in[c] = sum_{m < c} exp(total decay of chunks m+1 .. c-1) states[m],
    # one (chunks, chunks) product per head (no loop over chunks), from float64 sums of the chunk totals
    total = s_last[..., 0].permute(0, 2, 3, 1)  # (b, g, r, c)
    upto = torch.cumsum(total, dim=-1)  # decay exponent at the end of chunk m
    earlier = torch.ones(nchunks, nchunks, dtype=torch.bool, device=x.device).tril(-1)  # m < c
    carry = torch.where(earlier, (upto - total)[..., :, None] - upto[..., None, :], float("-inf")).exp()
    per_head = chunk_states.view(batch, nchunks, ngroups, dstate, r, headdim).permute(0, 2, 4, 1, 3, 5)
    h_in = torch.matmul(carry.to(u.dtype), per_head.reshape(batch, ngroups, r, nchunks, dstate * headdim))
    h_in = h_in.view(batch, ngroups, r, nchunks, dstate, headdim).permute(0, 3, 1, 4, 2, 5)
    h_in = h_in.reshape(batch, nchunks, ngroups, dstate, r * headdim)  # (b, c, g, n, r p)

    # inter-chunk (off-diagonal): exp(s_i) C_i . h_in, per group one (Q, n) @ (n, r p) product
    y_off = torch.matmul(C, h_in).view(batch, nchunks, ngroups, Q, r, headdim)
    # y_off first: the sum takes its (output) memory order, so the reshape below is a view for one group
    y = y_off * torch.exp(s).to(u.dtype).transpose(-1, -2)[..., None] + y.transpose(3, 4)  # (b, c, g, Q, r, p)
    y = y.transpose(2, 3).reshape(batch, nchunks * Q, nheads, headdim)
    return y[:, :L] if pad else y  # (a full slice would still cost its backward a zero fill and a copy)
