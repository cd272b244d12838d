"""advssm.adv_train: attacks, robust evaluation and adversarial-training engines for any nn.Module.

    from advssm.adv_train import PGD, AutoAttack, evaluate
    result = evaluate(model, (x, y), {"pgd": PGD(model, eps=0.1, alpha=0.025), "aa": AutoAttack(model, eps=0.1)})

The flat API below is the whole everyday surface; the submodules (``attacks``, ``threat_models``,
``evaluation``, ``trainer``, ``config``, ``methods``, ``distributed``) hold the rest.
"""
from . import threat_models
from ._version import INTERFACE_VERSION, __version__
from .attacks import APGD, APGDT, ATTACKS, FAB, FGSM, PGD, AutoAttack, Square, build, build_attack
from .config import TrainConfig
from .evaluation import EvalResult, evaluate
from .trainer import Trainer

__all__ = [
    "__version__", "INTERFACE_VERSION",
    "FGSM", "PGD", "APGD", "APGDT", "FAB", "Square", "AutoAttack", "build", "ATTACKS", "build_attack", "threat_models",
    "evaluate", "EvalResult", "Trainer", "TrainConfig",
]
