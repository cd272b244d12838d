"""FGSM (Goodfellow et al. 2015): one step of size eps along the steepest-ascent direction."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Attack, get_loss, steepest_ascent


class FGSM(Attack):
    """Fast Gradient Sign Method: ``x + eps * sign(grad_x loss)`` (Linf), ``x + eps * g / ||g||`` (L2), or eps on
    the coordinate of largest ``|g|`` that the box lets move (L1); within the call's mask.

    Args:
        model: classifier mapping [0, 1] inputs to logits.
        eps: perturbation radius.
        norm: "Linf" (the classical FGSM), "L2" (fast gradient method) or "L1".
        loss: "ce", "margin" or "dlr".
        seed: accepted so every attack takes the same arguments; FGSM draws no random numbers.
    """

    def __init__(self, model: nn.Module, eps: float, norm: str = "Linf", loss: str = "ce", seed: int | None = None):
        super().__init__(model, eps, norm=norm, seed=seed)
        self.loss_name = loss
        self.loss_fn = get_loss(loss)

    def budget(self) -> dict:
        return {"steps": 1, "loss": self.loss_name}

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        _, grad, _ = self.loss_and_grad(x, lambda z: self.loss_fn(z, y))
        return x + self.eps * steepest_ascent(grad, self.norm, self.mask, x)
