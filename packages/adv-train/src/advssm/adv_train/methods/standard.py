"""Standard training: cross-entropy on clean inputs."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import StepContext, TrainMethod, ce_stats


class Standard(TrainMethod):
    """Plain empirical risk minimisation (the paper's ST)."""

    name = "standard"

    def loss(self, ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = ctx.model(x)
        loss = F.cross_entropy(logits, y)
        return loss, ce_stats(loss, y, clean=logits)
