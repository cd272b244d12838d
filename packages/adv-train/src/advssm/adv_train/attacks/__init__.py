"""Adversarial attacks for any classifier mapping [0, 1] inputs to logits (torchattacks-style calls).

    attack = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    x_adv = attack(x, y)
"""
from .base import NORMS, Attack, cross_entropy, dlr_loss, dlr_targeted_loss, margin_loss, per_example_norm, project
from .fgsm import FGSM
from .pgd import PGD

__all__ = [
    "Attack", "NORMS", "FGSM", "PGD",
    "cross_entropy", "margin_loss", "dlr_loss", "dlr_targeted_loss", "per_example_norm", "project",
]
