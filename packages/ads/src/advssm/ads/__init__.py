"""advssm.ads: Adaptive Scaling (AdS) for deep SSMs and the error-propagation analysis.

``AdaptiveScaling`` is the output transform registered as ``"ads"``; ``attach_ads`` and
``detach_ads`` put it into (or take it out of) a built model's layers;
``propagation_analysis`` measures how a perturbation travels through a model.
"""
from ._version import INTERFACE_VERSION, __version__
from .analysis import PropagationReport, kernel_gain, propagation_analysis
from .scaling import ACTIVATIONS, AdaptiveScaling, attach_ads, detach_ads

__all__ = [
    "__version__", "INTERFACE_VERSION",
    "AdaptiveScaling", "ACTIVATIONS", "attach_ads", "detach_ads",
    "propagation_analysis", "PropagationReport", "kernel_gain",
]
