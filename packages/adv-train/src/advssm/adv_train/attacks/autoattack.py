"""AutoAttack (Croce & Hein, ICML 2020): an ensemble of parameter-free attacks run one after the
other, each only on the examples the previous ones did not break.

The standard version (Linf or L2): APGD-CE (100 iterations, no restarts), APGD-T (100 iterations,
9 target classes), FAB-T (100 iterations, 9 target classes), Square (5000 queries, p_init 0.8), all
in the threat model's norm. For L1, as the AutoAttack code sets it: APGD-CE with 5 restarts and
APGD-T with 5 target classes, both sparse L1-APGD with the three-stage radius schedule (``large_reps``),
FAB-T (L1) and the L1 Square (5000 queries, p_init 0.8).
The "rand" version, for randomised models: APGD-CE and APGD-DLR (100 iterations) with an expectation
over 20 transformations per step (EOT). A call's mask (``aa(x, y, mask=m)``) goes to every component.

    aa = AutoAttack(model, norm="L2", eps=0.5)            # standard
    x_adv = aa(x, y)
    aa.last_broken                                        # {"apgd-ce": 31, "apgd-t": 2, "fab-t": 0, "square": 1}
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .apgd import APGD
from .apgd_targeted import APGDT
from .base import Attack
from .fab import FAB
from .square import Square

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
STANDARD_L1 = STANDARD  # the same four attacks, each in its L1 version (APGD's and APGD-T's settings: _BUILDERS)
RAND = ("apgd-ce", "apgd-dlr")
EOT_ITER = 20  # samples per step in the "rand" version
FIXED_VERSIONS = ("standard", "rand")  # the versions that fix their attacks and budgets
VERSIONS = (*FIXED_VERSIONS, "custom")


# Each of AutoAttack's attacks by name; at steps=100 these are the AutoAttack paper's budgets (for L1 those the
# AutoAttack code sets: APGD with 5 restarts, APGD-T with 5 targets, both with the large_reps schedule).
_BUILDERS: dict[str, Callable[[nn.Module, str, float, int | None, int], Attack]] = {
    "apgd-ce": lambda model, norm, eps, seed, steps: APGD(model, norm=norm, eps=eps, steps=steps,
                                                          n_restarts=5 if norm == "L1" else 1, loss="ce", seed=seed,
                                                          large_reps=norm == "L1"),
    "apgd-dlr": lambda model, norm, eps, seed, steps: APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1,
                                                           loss="dlr", seed=seed),
    "apgd-t": lambda model, norm, eps, seed, steps: APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=1,
                                                          n_target_classes=5 if norm == "L1" else 9, seed=seed,
                                                          large_reps=norm == "L1"),
    "fab-t": lambda model, norm, eps, seed, steps: FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=1,
                                                       targeted=True, n_target_classes=9, seed=seed),
    "fab": lambda model, norm, eps, seed, steps: FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=5,
                                                     targeted=False, seed=seed),
    # Square has no steps: 50 queries per step keeps the paper's ratio (5000 queries at 100 steps)
    "square": lambda model, norm, eps, seed, steps: Square(model, eps=eps, n_queries=50 * steps, p_init=0.8,
                                                           n_restarts=1, seed=seed, norm=norm),
}
#: The names ``AutoAttack(version="custom", attacks=[...])`` and ``build_attack`` accept.
ATTACK_NAMES = tuple(_BUILDERS)


def build_attack(name: str, model: nn.Module, norm: str, eps: float, seed: int | None, steps: int = 100) -> Attack:
    """One of AutoAttack's attacks by name, with the AutoAttack paper's budgets, or a reduced budget of ``steps``
    iterations (APGD, FAB; Square gets 50 queries per step). ``describe()`` of the result states the budget.

        square = build_attack("square", model, "Linf", eps=0.3, seed=0, steps=20)   # Square, 1000 queries
        square.describe()["queries"]                                                # 1000
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown AutoAttack attack {name!r}; choose from {sorted(_BUILDERS)} "
                         "or pass Attack instances")
    return _BUILDERS[name](model, norm, eps, seed, steps)


class AutoAttack(Attack):
    """The AutoAttack ensemble.

    Args:
        model: classifier mapping [0, 1] inputs to logits.
        norm: "Linf", "L2" or "L1".
        eps: radius of the threat model's ball.
        version: "standard" (the four attacks above, paper budgets), "rand" (APGD-CE and APGD-DLR with
            EOT over 20 samples, for randomised models) or "custom" (``attacks``).
        attacks: for "custom", a list of names ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "fab",
            "square"), ``Attack`` instances with the same eps and norm, or (name, Attack) pairs (the name
            labels it in ``last_broken`` and the records), run in that order.
        seed: seeds every attack built by name.

    After a call, ``last_broken`` maps each attack's name to how many examples it broke
    (examples the attacks before it had not broken), ``last_broken_by`` (batch,) holds per example
    the position in ``attacks`` of the attack that broke it (-1: none, or misclassified clean), and
    ``last_n_correct`` counts the clean-correct ones.
    """

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, version: str = "standard",
                 attacks: list[str | Attack | tuple[str, Attack]] | None = None, seed: int | None = 0):
        super().__init__(model, eps, norm=norm, seed=seed)
        if version in FIXED_VERSIONS:
            if attacks is not None:
                raise ValueError(f"version={version!r} fixes its attacks; pass attacks=... with version='custom'")
            standard = STANDARD_L1 if norm == "L1" else STANDARD
            attacks = list(standard) if version == "standard" else [
                APGD(model, norm=norm, eps=self.eps, steps=100, n_restarts=1, loss=loss, seed=seed, eot_iter=EOT_ITER)
                for loss in ("ce", "dlr")]
        elif version == "custom":
            if not attacks:
                raise ValueError("version='custom' needs a non-empty list attacks=[...] of names or Attack instances")
        else:
            raise ValueError(f"unknown version {version!r}; choose one of {VERSIONS}")
        self.version = version
        self.attacks: dict[str, Attack] = {}
        for position, entry in enumerate(attacks):
            label, entry = entry if isinstance(entry, tuple) and len(entry) == 2 else (None, entry)
            attack = build_attack(entry, model, norm, self.eps, seed) if isinstance(entry, str) else entry
            if not isinstance(attack, Attack):
                raise TypeError(f"attacks must be names or Attack instances, got {type(entry).__name__}")
            if attack.eps != self.eps or attack.norm != self.norm:
                raise ValueError(f"{attack!r} has eps={attack.eps:g}, norm={attack.norm!r}; AutoAttack has "
                                 f"eps={self.eps:g}, norm={self.norm!r}: they must agree")
            name = label if isinstance(label, str) else entry if isinstance(entry, str) else \
                RAND[position] if version == "rand" else type(attack).__name__.lower()
            while name in self.attacks:
                name += "'"
            self.attacks[name] = attack
        self.last_broken: dict[str, int] = {}
        self.last_broken_by: Tensor | None = None
        self.last_n_correct = 0

    def sub_attacks(self) -> tuple[Attack, ...]:
        return tuple(self.attacks.values())

    def budget(self) -> dict:
        return {"version": self.version,
                "components": [{"name": name, **attack.describe()} for name, attack in self.attacks.items()]}

    def __repr__(self) -> str:
        return (f"AutoAttack(norm={self.norm!r}, eps={self.eps:g}, version={self.version!r}, "
                f"attacks={list(self.attacks)})")

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            logits = self.logits(x)
        robust = logits.argmax(1) == y
        self.last_n_correct = int(robust.sum())
        self.last_broken = dict.fromkeys(self.attacks, 0)
        x_adv = x.clone()
        broken_by = torch.full_like(y, -1)
        for position, (name, attack) in enumerate(self.attacks.items()):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            candidate = attack(x[idx], y[idx], mask=None if self.mask is None else self.mask[idx])
            with torch.no_grad():
                broken = self.logits(candidate).argmax(1) != y[idx]
            x_adv[idx[broken]] = candidate[broken]
            robust[idx[broken]] = False
            broken_by[idx[broken]] = position
            self.last_broken[name] = int(broken.sum())
        self.last_broken_by = broken_by
        return x_adv
