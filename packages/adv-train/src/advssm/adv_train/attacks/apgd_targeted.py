"""APGD-T (Croce & Hein, ICML 2020): APGD maximising the targeted DLR loss, once per target class.

AutoAttack's standard version runs it with 9 target classes, 100 iterations and one run per target:
the targets are the classes with the highest clean logits after the top one, and success still means
misclassification (any class). Each target's run attacks only the examples no earlier target broke.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .apgd import APGD
from .base import check_positive_int, cross_entropy, dlr_targeted_loss


class APGDT(APGD):
    """Targeted Auto-PGD (APGD-T): for each of the ``n_target_classes`` classes with the highest
    clean logits after the top one, an APGD run maximising the targeted loss towards that class,
    on the examples not yet fooled. Success means misclassification (any class), as in AutoAttack.
    ``model``, ``norm``, ``eps``, ``steps``, ``rho``, ``seed``, ``eot_iter`` and ``large_reps`` mean what they
    mean for ``APGD``.

    Args:
        loss: "dlr-targeted" (default, needs >= 4 classes) or "ce-targeted" (minus the CE to the target).
        n_target_classes: how many target classes to try (capped at classes - 1).
        n_restarts: runs per target class.
    """

    TARGETED_LOSSES = ("dlr-targeted", "ce-targeted")

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, steps: int = 100,
                 n_restarts: int = 1, n_target_classes: int = 9, loss: str = "dlr-targeted", rho: float = 0.75,
                 seed: int | None = 0, eot_iter: int = 1, large_reps: bool = False):
        super().__init__(model, norm=norm, eps=eps, steps=steps, n_restarts=n_restarts, loss=loss, rho=rho,
                         seed=seed, eot_iter=eot_iter, large_reps=large_reps)
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")

    def _loss_function(self, loss: str) -> Callable:
        if loss not in self.TARGETED_LOSSES:
            raise ValueError(f"unknown targeted loss {loss!r}; choose one of {self.TARGETED_LOSSES}")
        if loss == "ce-targeted":
            return lambda logits, y, target: -cross_entropy(logits, target)
        return dlr_targeted_loss

    def budget(self) -> dict:
        return {**super().budget(), "target_classes": self.n_target_classes}

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            logits = self.logits(x)
            ranked = logits.argsort(dim=1, descending=True)
            # the loss's own checks (targeted DLR's class count), even if every example is already fooled
            self.loss_fn(logits, y, ranked[:, min(1, logits.shape[1] - 1)])
        x_adv, fooled = x.clone(), logits.argmax(1) != y
        for rank in range(1, min(self.n_target_classes, logits.shape[1] - 1) + 1):
            target = ranked[:, rank]
            for _ in range(self.n_restarts):
                self.attack_remaining(x, y, x_adv, fooled,
                                      lambda z, idx, t=target: self.loss_fn(z, y[idx], t[idx]), generator)
        return x_adv
