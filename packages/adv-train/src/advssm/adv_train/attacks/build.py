"""The one builder of attacks by name, used by training's evaluation, the CLI's final evaluation and
``advssm eval``: ``ATTACKS`` is the one list of the names they accept.

    pgd = build("pgd", model, norm="Linf", eps=0.1, steps=10, alpha=0.025, seed=0)
    aa = build("aa", model, norm="L1", eps=12.0, seed=0)                       # AutoAttack, L1 standard version
    build("apgd-ce", model, eps=0.1, threat_model=window(start=0, length=16)).describe()["threat_model"]
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .autoattack import ATTACK_NAMES, VERSIONS, AutoAttack, build_attack
from .base import Attack
from .fgsm import FGSM
from .pgd import PGD

#: Every attack ``build`` makes: FGSM, PGD, AutoAttack's components by name (``ATTACK_NAMES``) and "aa", the whole
#: of AutoAttack.
ATTACKS = ("fgsm", "pgd", *ATTACK_NAMES, "aa")
#: PGD's defaults where its settings are not given: 10 steps of eps / 4.
PGD_STEPS, PGD_ALPHA_OF_EPS = 10, 0.25


def build(name: str, model: nn.Module, *, eps: float, norm: str = "Linf", steps: int | None = None,
          alpha: float | None = None, seed: int | None = 0, aa_version: str = "standard",
          aa_attacks: Sequence[str] | None = None, aa_steps: int = 100, threat_model=None) -> Attack:
    """The attack called ``name`` (one of ``ATTACKS``), at radius ``eps`` in ``norm``.

    Args:
        steps, alpha: PGD's steps and step size (default 10 and eps / 4); no other attack takes them.
        seed: seeds the attack (and AutoAttack's components).
        aa_version, aa_attacks, aa_steps: "aa" only: AutoAttack's "standard" or "rand" version, or "custom"
            with ``aa_attacks`` (names from ``ATTACK_NAMES``) run at ``aa_steps`` iterations each.
        aa_steps: also the budget of a single AutoAttack component built by name (100: the paper's).
        threat_model: the attack's default mask (``advssm.adv_train.threat_models``); None: every coordinate.

    Example:
        build("pgd", model, eps=8 / 255, steps=20, seed=1).describe()["steps"]    # 20
    """
    key = str(name).strip().lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    if key != "aa" and (aa_attacks is not None or aa_version != "standard"):
        raise ValueError(f"aa_version and aa_attacks set AutoAttack ('aa'), not {key!r}")
    if key != "pgd" and (steps is not None or alpha is not None):
        raise ValueError(f"steps and alpha are PGD's settings; {key!r} does not take them"
                         + (" (AutoAttack's components take aa_steps)" if key != "fgsm" else ""))
    if key == "fgsm":
        attack = FGSM(model, eps, norm=norm, seed=seed)
    elif key == "pgd":
        attack = PGD(model, eps, alpha=PGD_ALPHA_OF_EPS * eps if alpha is None else alpha,
                     steps=PGD_STEPS if steps is None else steps, random_start=True, norm=norm, seed=seed)
    elif key == "aa":
        attack = _autoattack(model, norm, eps, seed, aa_version, aa_attacks, aa_steps)
    else:
        attack = build_attack(key, model, norm, eps, seed, steps=aa_steps)
    attack.threat_model = threat_model
    return attack


def _autoattack(model: nn.Module, norm: str, eps: float, seed: int | None, version: str,
                attacks: Sequence[str] | None, steps: int) -> AutoAttack:
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; choose one of {', '.join(VERSIONS)}")
    if version != "custom":
        if attacks is not None:
            raise ValueError(f"AutoAttack {version!r} fixes its attacks; list them with version 'custom'")
        return AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed)
    if not attacks:
        raise ValueError("AutoAttack 'custom' needs a non-empty list of attacks from " + ", ".join(ATTACK_NAMES))
    parts = [(name, build_attack(name, model, norm, eps, seed, steps=steps)) for name in attacks]
    return AutoAttack(model, norm=norm, eps=eps, version="custom", attacks=parts, seed=seed)
