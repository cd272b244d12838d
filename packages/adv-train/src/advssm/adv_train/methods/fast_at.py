"""Fast adversarial training (Wong, Rice and Kolter 2020): FGSM from a uniform random start."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import StepContext, TrainMethod, ce_stats, project_linf


class FastAT(TrainMethod):
    """FGSM with a uniform random start in the eps ball and a step of ``fast_at_alpha * eps`` (1.25 eps).

    The FGSM step runs in the model's training mode, as in Wong et al.; the step is larger than eps so the
    random start does not keep the example away from the ball's surface.
    """

    name = "fast-at"

    def perturb(self, ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
        """The FGSM example from a random start, projected back into the ball and the image box."""
        eps = ctx.eps
        start = project_linf(x + (2 * ctx.rand_like(x) - 1) * eps, x, eps).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(ctx.model(start), y), start)
        return project_linf(start.detach() + ctx.config.fast_at_alpha * eps * grad.sign(), x, eps)

    def loss(self, ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = ctx.model(self.perturb(ctx, x, y))
        loss = F.cross_entropy(logits, y)
        return loss, ce_stats(loss, y, adv=logits)
