"""Causal multi-head self-attention, for hybrid stacks that mix SSM and attention layers.

    q, k, v = qkv(x)                                 n_heads heads of width d_model / n_heads
    y = softmax(q k^T / sqrt(d_head) + causal mask) v, heads concatenated     (B, L, d_model)
    out = out_proj(dropout(y))

``mix`` returns y (before the output projection); ``project`` is dropout -> out_proj.
No positional encoding: position enters only through the causal mask.

``causal_attention`` (shared with Mega) runs ``scaled_dot_product_attention``; under
``ops.double_backward()`` it pins SDPA's math backend, as the fused kernels (flash attention on
the CPU, flash / memory-efficient on CUDA) have a first-order backward only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import double_backward_enabled, say_double_backward
from .base import SequenceLayer, check_backend, check_dropout


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, is_causal=True)``; on its math backend (differentiable
    twice, L x L scores materialised) inside ``double_backward()``.

    Example:
        >>> q = torch.randn(2, 4, 16, 8)   # (batch, heads, L, d_head)
        >>> causal_attention(q, q, q).shape
        torch.Size([2, 4, 16, 8])
    """
    if not double_backward_enabled():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    say_double_backward("fused scaled_dot_product_attention", "SDPA's math backend")
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


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

    uses_attention = True

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
        y = causal_attention(q, k, v)
        return y.transpose(1, 2).reshape(batch, L, self.d_model)

    def project(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Dropout, then the output projection; ``x`` is unused."""
        return self.out_proj(self.dropout(y))
