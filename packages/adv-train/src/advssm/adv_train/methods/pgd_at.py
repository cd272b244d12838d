"""PGD adversarial training (Madry et al. 2018): cross-entropy on PGD examples only."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import PGD
from .base import StepContext, TrainMethod, ce_stats


def pgd_examples(ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
    """Linf PGD examples with this epoch's eps/alpha (``ctx.eps``, ``ctx.alpha``), the run's attack_steps
    and a uniform random start.

    The attack puts the model in eval mode and leaves no gradient on the weights; its random start is
    seeded from the run's generator, so the run's one seed fixes it.
    """
    cfg = ctx.config
    seed = int(torch.randint(2**62, (1,), generator=ctx.generator))
    attack = PGD(ctx.model, eps=ctx.eps, alpha=ctx.alpha, steps=cfg.attack_steps, random_start=True, seed=seed)
    return attack(x, y).detach()


class PGDAT(TrainMethod):
    """Madry's PGD-AT: minimise the cross-entropy of PGD-``attack_steps`` adversarial examples."""

    name = "pgd-at"

    def loss(self, ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = ctx.model(pgd_examples(ctx, x, y))
        loss = F.cross_entropy(logits, y)
        return loss, ce_stats(loss, y, adv=logits)
