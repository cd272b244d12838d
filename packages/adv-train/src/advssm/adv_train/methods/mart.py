"""MART (Wang et al. 2020): misclassification-aware adversarial training."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import StepContext, TrainMethod, ce_stats
from .pgd_at import pgd_examples


def mart_loss(logits: Tensor, adv_logits: Tensor, y: Tensor, beta: float) -> Tensor:
    """``BCE(adv) + beta * mean(KL(p_clean || p_adv) * (1 - p_clean[y]))``.

    BCE is the boosted cross-entropy: CE on the adversarial output plus ``-log(1 - p_adv[k])`` for the
    most likely wrong class k. The small constants (1.0001, 1e-12, 1.0000001) keep the logs finite as in
    the MART paper.
    """
    adv_probs = F.softmax(adv_logits, dim=1)
    top2 = adv_probs.topk(2, dim=1).indices
    wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    boosted_ce = F.cross_entropy(adv_logits, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    probs = F.softmax(logits, dim=1)
    true_probs = probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), probs, reduction="none").sum(dim=1)
    return boosted_ce + beta * (kl * (1.0000001 - true_probs)).mean()


class MART(TrainMethod):
    """MART on PGD examples (cross-entropy PGD, uniform random start), weight ``mart_beta``."""

    name = "mart"

    def loss(self, ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        x_adv = pgd_examples(ctx, x, y)
        logits, adv_logits = ctx.model(x), ctx.model(x_adv)
        loss = mart_loss(logits, adv_logits, y, ctx.config.mart_beta)
        return loss, ce_stats(loss, y, clean=logits, adv=adv_logits)
