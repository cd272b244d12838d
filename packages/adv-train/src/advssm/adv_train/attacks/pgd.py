"""PGD (Madry et al. 2018): projected steepest ascent from a random start, with restarts."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Attack, check_eps, check_positive_int, get_loss, project, random_in_ball, steepest_ascent


def keep_worst(best: Tensor, best_fooled: Tensor, best_loss: Tensor,
               cand: Tensor, cand_fooled: Tensor, cand_loss: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per example, keeps the candidate if it fools the model where the best does not, or,
    at equal success, if its loss is higher. Returns the updated (x, fooled, loss)."""
    take = (cand_fooled & ~best_fooled) | ((cand_fooled == best_fooled) & (cand_loss > best_loss))
    mask = take.reshape(-1, *([1] * (best.dim() - 1)))
    return torch.where(mask, cand, best), best_fooled | cand_fooled, torch.where(take, cand_loss, best_loss)


class PGD(Attack):
    """Projected Gradient Descent on the loss, Linf (sign steps), L2 (normalised-gradient steps) or L1 (a step
    on the coordinate of largest gradient that the box lets move, then the projection onto ball and box).

    Args:
        model: classifier mapping [0, 1] inputs to logits.
        eps: radius of the threat model's ball.
        alpha: step size (in the units of ``norm``).
        steps: number of gradient steps.
        random_start: start from a point drawn uniformly from the eps-ball (else from ``x``).
        norm: "Linf", "L2" or "L1".
        restarts: independent runs; per example the worst (fooling first, then highest loss) is kept.
        loss: "ce", "margin" or "dlr".
        seed: seeds the random starts (see ``Attack``).
    """

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int = 10, random_start: bool = True,
                 norm: str = "Linf", restarts: int = 1, loss: str = "ce", seed: int | None = None):
        super().__init__(model, eps, norm=norm, seed=seed)
        self.alpha = check_eps(alpha, "alpha")
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        self.random_start = bool(random_start)
        self.loss_name = loss
        self.loss_fn = get_loss(loss)

    def __repr__(self) -> str:
        return (f"PGD(eps={self.eps:g}, alpha={self.alpha:g}, steps={self.steps}, norm={self.norm!r}, "
                f"restarts={self.restarts}, loss={self.loss_name!r})")

    def budget(self) -> dict:
        return {"steps": self.steps, "alpha": self.alpha, "restarts": self.restarts, "random_start": self.random_start,
                "loss": self.loss_name}

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        def loss(logits: Tensor) -> Tensor:
            return self.loss_fn(logits, y)

        best, mask = None, self.mask
        for _ in range(self.restarts):
            x_adv = x + random_in_ball(x, self.eps, self.norm, generator, mask) if self.random_start else x
            x_adv = project(x_adv, x, self.eps, self.norm, mask)
            for _ in range(self.steps):
                _, grad, _ = self.loss_and_grad(x_adv, loss)
                x_adv = project(x_adv + self.alpha * steepest_ascent(grad, self.norm, mask, x_adv), x, self.eps,
                                self.norm, mask)
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = self.logits(x_adv)
                cand = (x_adv, logits.argmax(1) != y, loss(logits))
            best = cand if best is None else keep_worst(*best, *cand)
        return best[0]
