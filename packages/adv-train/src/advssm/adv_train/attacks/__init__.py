"""Adversarial attacks for any classifier mapping [0, 1] inputs to logits (torchattacks-style calls).

    attack = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    x_adv = attack(x, y)

A mask restricts the threat model to some coordinates (``attack(x, y, mask=m)``, see
``advssm.adv_train.threat_models``); ``build(name, model, eps=...)`` makes any attack by name (``ATTACKS``).

Every attack puts the model in eval mode (restoring each submodule's mode after), takes
gradients with respect to the input only, and returns a detached tensor inside the eps-ball
of its norm and inside [0, 1]; a seed fixes all of its randomness.
"""
from .apgd import APGD, apgd_checkpoints, halve_step_size
from .apgd_targeted import APGDT
from .autoattack import ATTACK_NAMES, STANDARD, STANDARD_L1, AutoAttack, build_attack
from .base import (
    NORMS,
    Attack,
    check_mask,
    cross_entropy,
    dlr_loss,
    dlr_targeted_loss,
    eval_mode,
    margin_loss,
    per_example_norm,
    project,
    project_l1_box,
)
from .build import ATTACKS, build
from .fab import FAB, project_onto_hyperplane_in_box
from .fgsm import FGSM
from .pgd import PGD
from .square import Square, p_selection

__all__ = [
    "Attack", "NORMS", "FGSM", "PGD", "APGD", "APGDT", "FAB", "Square", "AutoAttack", "STANDARD", "STANDARD_L1",
    "ATTACK_NAMES", "ATTACKS", "build", "build_attack", "check_mask", "project_l1_box",
    "cross_entropy", "margin_loss", "dlr_loss", "dlr_targeted_loss", "per_example_norm", "project", "eval_mode",
    "apgd_checkpoints", "halve_step_size", "p_selection", "project_onto_hyperplane_in_box",
]
