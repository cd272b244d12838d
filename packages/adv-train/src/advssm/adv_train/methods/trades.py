"""TRADES (Zhang et al. 2019): clean cross-entropy plus beta times the KL to the adversarial output."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import eval_mode
from .base import StepContext, TrainMethod, ce_stats, kl_to_clean, project_linf


class TRADES(TrainMethod):
    """TRADES with a KL inner maximisation of ``attack_steps`` signed steps of size ``alpha``.

    The inner maximisation starts at ``x + 0.001 N(0, 1)`` and runs with the model in eval mode (each submodule's
    mode is restored after); the outer loss is ``CE(f(x), y) + trades_beta * KL(f(x) || f(x_adv))`` with the
    gradient flowing through both outputs, as in the TRADES paper.
    """

    name = "trades"

    def perturb(self, ctx: StepContext, x: Tensor) -> Tensor:
        """The KL-maximising example inside the Linf ball around ``x``."""
        cfg, model = ctx.config, ctx.model
        with eval_mode(model):  # restores every submodule's own mode, not just the top one
            with torch.no_grad():
                clean_probs = F.softmax(model(x), dim=1)
            x_adv = x.detach() + 0.001 * ctx.randn_like(x)
            for _ in range(cfg.attack_steps):
                x_adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(kl_to_clean(model(x_adv), clean_probs, reduction="sum"), x_adv)
                x_adv = project_linf(x_adv.detach() + ctx.alpha * grad.sign(), x, ctx.eps)
        return x_adv.detach()

    def loss(self, ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        x_adv = self.perturb(ctx, x)
        logits, adv_logits = ctx.model(x), ctx.model(x_adv)
        loss = F.cross_entropy(logits, y) + ctx.config.trades_beta * kl_to_clean(adv_logits, F.softmax(logits, dim=1))
        return loss, ce_stats(loss, y, clean=logits, adv=adv_logits)
