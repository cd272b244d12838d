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
    x = x.reshape(batch, nchunks, Q, ngroups, r, headdim)
    dt = dt.reshape(batch, nchunks, Q, ngroups, r)
    B = B.reshape(batch, nchunks, Q, ngroups, dstate)
    C = C.reshape(batch, nchunks, Q, ngroups, dstate)

    s = torch.cumsum(dt * A.reshape(ngroups, r), dim=2)  # (b, c, Q, g, r): decay exponents from the chunk start
    s_last = s[:, :, -1]  # (b, c, g, r)

    # intra-chunk (diagonal block): (C_i . B_j) exp(s_i - s_j) dt_j, causal
    s_q = s.permute(0, 1, 3, 4, 2)  # (b, c, g, r, Q)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    seg = torch.where(causal, s_q[..., :, None] - s_q[..., None, :], float("-inf")).exp()  # (b, c, g, r, Q, Q)
    CB = torch.einsum("bcign,bcjgn->bcgij", C, B)  # (b, c, g, Q, Q)
    scores = CB[:, :, :, None] * seg * dt.permute(0, 1, 3, 4, 2)[..., None, :]
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", scores, x)

    # each chunk's own end state from its inputs: sum_j exp(s_Q - s_j) dt_j x_j B_j^T
    w = torch.exp(s_last[:, :, None] - s) * dt  # (b, c, Q, g, r)
    chunk_states = torch.einsum("bcjgn,bcjgrp->bcgrpn", B, x * w[..., None])  # (b, c, g, r, p, n)

    # states entering each chunk: a sequential loop over chunks
    decay = torch.exp(s_last)[..., None, None]  # (b, c, g, r, 1, 1)
    h = torch.zeros_like(chunk_states[:, 0])
    entering = []
    for c in range(nchunks):
        entering.append(h)
        h = decay[:, c] * h + chunk_states[:, c]
    h_in = torch.stack(entering, dim=1)  # (b, c, g, r, p, n)

    # inter-chunk (off-diagonal): exp(s_i) h_in C_i
    y = y + torch.einsum("bcign,bcgrpn->bcigrp", C, h_in) * torch.exp(s)[..., None]
    return y.reshape(batch, nchunks * Q, nheads, headdim)[:, :L]
