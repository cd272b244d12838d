"""TrainConfig: every setting of an adversarial-training run, validated once, JSON round trip.

Defaults follow the paper's protocol (arXiv 2406.05532, MNIST): AdamW lr 1e-3, weight decay 2e-4,
batch 256, cosine schedule over all epochs, seed 5, Linf eps 0.3 with PGD step 0.04.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from .attacks.autoattack import ATTACK_NAMES, FIXED_VERSIONS, VERSIONS
from .methods import METHODS

#: Per-dataset protocol values of the paper (arXiv 2406.05532; listed in docs/reproducing.md); anything else keeps
#: the MNIST defaults.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"eps": 0.3, "alpha": 0.04, "epochs": 100, "trades_beta": 1.0},
    "cifar10": {"eps": 8 / 255, "alpha": 2 / 255, "epochs": 180, "trades_beta": 6.0},
    "tinyimagenet": {"eps": 8 / 255, "alpha": 2 / 255, "epochs": 180, "trades_beta": 6.0},
}

#: The training methods, in the registry's order (``advssm.adv_train.methods.METHODS``).
METHOD_NAMES = tuple(METHODS)
#: Names a user may try for Jacobian regularisation, which is a term added to any method, not a method.
JACOBIAN_NAMES = ("jr", "jacobian", "jacobian-reg", "jacobian-regularisation", "jacobian-regularization", "jreg")
#: ``precision`` values: the autocast dtype of the model's forward in training and evaluation (fp32 = none).
PRECISIONS = ("fp32", "bf16", "fp16")
#: The AutoAttack versions ``aa_version`` accepts (those of ``advssm.adv_train.attacks.AutoAttack``).
AA_VERSIONS = VERSIONS


def decide_select_by(select_by: str, method: str) -> str:
    """``select_by`` with "auto" decided, the one place it is: clean accuracy for standard training, PGD accuracy
    for the adversarial methods.

    Example:
        >>> decide_select_by("auto", "pgd-at")
        'pgd'
    """
    if select_by != "auto":
        return select_by
    return "clean" if method == "standard" else "pgd"


def decide_device(device: str) -> str:
    """``device`` with "auto" decided, the one place it is: "cuda" where CUDA is available here, else "cpu".

    Example:
        >>> decide_device("cpu")
        'cpu'
    """
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run, checked when made and frozen after (a change is a new config:
    ``dataclasses.replace(config, epochs=5)``, checked again).

    Attributes:
        method: training method, one of ``METHOD_NAMES``.
        epochs: number of epochs (the cosine schedule spans all of them).
        lr, weight_decay: AdamW settings.
        batch_size: global batch size (split across ranks under torch.distributed).
        scheduler: ``"cosine"`` (CosineAnnealingLR over all epochs) or ``"none"``.
        eps, alpha, attack_steps: Linf budget, step size and steps of the training attack.
        eps_warmup_epochs: k > 0 ramps the training attack's budget up linearly: epoch e (1-based) trains
            against ``eps * min(1, e / k)`` with ``alpha`` scaled by the same factor (so epoch 1 uses eps / k,
            epoch k and later the full eps); 0 (the paper's protocol) trains at the full eps from the start.
            Every adversarial method obeys it; evaluation always uses the full eps.
        trades_beta, mart_beta: weight of the KL term of TRADES / MART.
        free_replays: FreeAT's m (replays of each batch).
        yopo_m, yopo_n: YOPO's outer and inner step counts.
        fast_at_alpha: Fast-AT step size as a multiple of eps (Wong et al. 2020: 1.25).
        noise_sigma: standard deviation of the ``gaussian`` method's input noise (Cohen et al. 2019 train with
            the sigma they certify with: 0.12, 0.25, 0.5, 1.0 for [0, 1] pixels); only that method reads it.
        jacobian_weight, jacobian_projections: Jacobian regularisation (0 = off), added to any method: the loss
            gains ``jacobian_weight * ||d logits / d x||_F^2`` on the clean batch (Hoffman et al. 2019), estimated
            with ``jacobian_projections`` random projections.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the model's forward runs under autocast in that
            dtype in training and evaluation (the SSM cores stay fp32; logits, losses and the attacks' arithmetic
            are fp32); fp16 scales the loss (GradScaler) and needs a CUDA device (on the CPU use bf16).
        eval_pgd_steps: steps of the PGD evaluation attack each epoch.
        eval_n: evaluate on the first ``eval_n`` test examples (None = whole test set).
        aa_every, aa_n: AutoAttack every k epochs (0 = never; also at the last epoch) on the first aa_n examples.
        aa_version, aa_attacks: ``"standard"`` (the four-attack ensemble), ``"rand"`` (APGD-CE and APGD-DLR with
            an expectation over 20 samples per step, for models that are random at evaluation time), or
            ``"custom"`` with ``aa_attacks`` a list of attack names (e.g. ``["apgd-ce", "apgd-t"]``) for a cheaper
            run; ``aa_attacks`` is None with the other two, which fix their attacks.
        select_on: where Best is chosen: ``"test"`` (the paper's choice; it flatters Best, as the test set
            then also picks the epoch) or ``"val"``, the last ``val_n`` training examples held out from training.
        select_by: by what: ``"pgd"`` or ``"clean"`` accuracy; ``"auto"`` = clean for standard training, PGD
            for the adversarial methods.
        val_n: size of the held-out slice when ``select_on = "val"``.
        seed: the one seed that fixes the run.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        num_workers: DataLoader worker processes.
    """

    method: str = "standard"
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 2e-4
    batch_size: int = 256
    scheduler: str = "cosine"
    eps: float = 0.3
    alpha: float = 0.04
    attack_steps: int = 10
    eps_warmup_epochs: int = 0
    trades_beta: float = 1.0
    mart_beta: float = 6.0
    free_replays: int = 4
    yopo_m: int = 5
    yopo_n: int = 3
    fast_at_alpha: float = 1.25
    noise_sigma: float = 0.25
    jacobian_weight: float = 0.0
    jacobian_projections: int = 1
    precision: str = "fp32"
    eval_pgd_steps: int = 10
    eval_n: int | None = None
    aa_every: int = 4
    aa_n: int = 2000
    aa_version: str = "standard"
    aa_attacks: list[str] | None = None
    select_on: str = "test"
    select_by: str = "auto"
    val_n: int = 1000
    seed: int = 5
    device: str = "cpu"
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad field and what it must be."""
        def fail(name: str, need: str) -> None:
            raise ValueError(f"TrainConfig.{name} must be {need}, got {getattr(self, name)!r}")

        for name in ("epochs", "batch_size", "attack_steps", "eps_warmup_epochs", "free_replays", "yopo_m",
                     "yopo_n", "jacobian_projections", "eval_pgd_steps", "aa_every", "aa_n", "seed", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"TrainConfig.{name} must be an int, got {type(value).__name__} {value!r}")
        for name in ("lr", "weight_decay", "eps", "alpha", "trades_beta", "mart_beta", "fast_at_alpha",
                     "jacobian_weight", "noise_sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"TrainConfig.{name} must be a finite number, got {value!r}")
        if self.method not in METHOD_NAMES:
            if isinstance(self.method, str) and self.method.lower().replace("_", "-") in JACOBIAN_NAMES:
                raise ValueError(f"TrainConfig.method must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}: "
                                 "Jacobian regularisation is not a method; add it to any method with "
                                 "TrainConfig.jacobian_weight = W (advssm run --jacobian-weight W, e.g. 0.01)")
            fail("method", f"one of {', '.join(METHOD_NAMES)}")
        if self.precision not in PRECISIONS:
            fail("precision", f"one of {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and self.device == "cpu":
            fail("precision", "'bf16' or 'fp32' on the CPU (fp16 autocast is for CUDA, with loss scaling; "
                              "the CPU has no fast fp16 matmuls): set precision = 'bf16' or device = 'cuda'")
        for name in ("epochs", "batch_size", "free_replays", "yopo_m", "yopo_n", "jacobian_projections",
                     "eval_pgd_steps", "aa_n"):
            if getattr(self, name) < 1:
                fail(name, ">= 1")
        for name in ("lr", "alpha", "fast_at_alpha", "noise_sigma"):
            if getattr(self, name) <= 0:
                fail(name, "> 0")
        for name in ("weight_decay", "trades_beta", "mart_beta", "jacobian_weight", "attack_steps", "aa_every",
                     "seed", "num_workers"):
            if getattr(self, name) < 0:
                fail(name, ">= 0")
        if not 0 < self.eps <= 1:
            fail("eps", "in (0, 1] (inputs live in [0, 1])")
        if not 0 <= self.eps_warmup_epochs <= self.epochs:
            fail("eps_warmup_epochs", f"in 0..epochs={self.epochs} (0 = off; the ramp reaches the full eps at epoch k)")
        if self.method in ("pgd-at", "trades", "mart") and self.attack_steps < 1:
            fail("attack_steps", f">= 1 for method {self.method!r}")
        if self.select_on not in ("test", "val"):
            fail("select_on", "'test' or 'val'")
        if self.select_by not in ("auto", "pgd", "clean"):
            fail("select_by", "'auto', 'pgd' or 'clean'")
        if isinstance(self.val_n, bool) or not isinstance(self.val_n, int) or self.val_n < 1:
            fail("val_n", "an int >= 1")
        if self.scheduler not in ("cosine", "none"):
            fail("scheduler", "'cosine' or 'none'")
        if self.eval_n is not None and (isinstance(self.eval_n, bool) or not isinstance(self.eval_n, int)
                                        or self.eval_n < 1):
            fail("eval_n", "None (whole test set) or an int >= 1")
        if not isinstance(self.aa_version, str) or self.aa_version not in AA_VERSIONS:
            fail("aa_version", "'standard', 'rand' or 'custom'")
        if self.aa_version == "custom":
            if (not isinstance(self.aa_attacks, list) or not self.aa_attacks
                    or not all(isinstance(a, str) for a in self.aa_attacks)):
                fail("aa_attacks", "a non-empty list of attack names when aa_version is 'custom'")
            unknown = [a for a in self.aa_attacks if a not in ATTACK_NAMES]
            if unknown:  # caught now rather than at the first AutoAttack epoch, hours into the run
                fail("aa_attacks", f"a list of names from {', '.join(ATTACK_NAMES)} (unknown: {', '.join(unknown)})")
        if self.aa_version in FIXED_VERSIONS and self.aa_attacks is not None:
            fail("aa_attacks",
                 f"None when aa_version is {self.aa_version!r} (set aa_version='custom' to choose attacks)")
        if not isinstance(self.device, str) or not (self.device in ("cpu", "cuda", "auto")
                                                    or self.device.startswith("cuda:")):
            fail("device", "'cpu', 'cuda', 'cuda:N' or 'auto'")

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """The paper's settings for ``dataset`` ("mnist", "cifar10", "tinyimagenet"), then ``overrides``."""
        if dataset not in DATASET_DEFAULTS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASET_DEFAULTS)}")
        return cls.from_dict({**DATASET_DEFAULTS[dataset], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict of every field."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are rejected with their names."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {', '.join(unknown)}; "
                             f"valid keys are {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> str:
        """JSON text of ``to_dict()``."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Inverse of ``to_json``."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"TrainConfig JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)
