"""Causal multi-head self-attention, for hybrid stacks that mix SSM and attention layers.

    q, k, v = qkv(x)                                 n_heads heads of width d_model / n_heads
    y = softmax(q k^T / sqrt(d_head) + causal mask) v, heads concatenated     (B, L, d_model)
    out = out_proj(dropout(y))

``mix`` returns y (before the output projection); ``project`` is dropout -> out_proj.
No positional encoding: position enters only through the causal mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SequenceLayer, check_backend, check_dropout


class Attention(SequenceLayer):
    """Causal multi-head softmax self-attention.

    Args:
        d_model: model width; must be divisible by ``n_heads``.
        n_heads: number of heads.
        dropout: dropout before the output projection.
        backend: accepted so that every layer takes the same keyword; attention always runs
            through ``torch.nn.functional.scaled_dot_product_attention`` (which picks its own fused
            kernel), so ``"triton"`` is refused rather than ignored.
    """

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0, backend: str = "auto"):
        super().__init__(d_model)
        name = type(self).__name__
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
            raise ValueError(f"{name}: n_heads must be a positive int dividing d_model={d_model}, got {n_heads!r}")
        self.n_heads = n_heads
        self.backend = check_backend(name, backend, triton="attention runs on scaled_dot_product_attention")
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.dropout = nn.Dropout(check_dropout(name, dropout))
        self.out_proj = nn.Linear(d_model, d_model)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated head outputs before the output projection, (B, L, d_model)."""
        batch, L, _ = x.shape
        # (B, L, 3, heads, d_head) -> three tensors of shape (B, heads, L, d_head)
        q, k, v = self.qkv(x).view(batch, L, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(batch, L, self.d_model)

    def project(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Dropout, then the output projection; ``x`` is unused."""
        return self.out_proj(self.dropout(y))
