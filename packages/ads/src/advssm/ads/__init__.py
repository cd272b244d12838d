"""advssm.ads: Adaptive Scaling (AdS) for deep SSMs and the error-propagation analysis.

``AdaptiveScaling`` is the output transform registered as ``"ads"``; ``attach_ads`` and
``detach_ads`` put it into (or take it out of) a built model's layers;
``propagation_analysis`` measures how a perturbation travels through a model.
"""
from advssm.ssm_layers.compat import require_interface

from ._version import INTERFACE_VERSION, __version__

require_interface("advssm-ads", __version__, "advssm.ssm_layers", "advssm-ssm-layers", supported=(1,))

from .analysis import PropagationReport, kernel_gain, propagation_analysis  # noqa: E402 (after the interface check)
from .scaling import ACTIVATIONS, AdaptiveScaling, attach_ads, detach_ads  # noqa: E402

__all__ = [
    "__version__", "INTERFACE_VERSION",
    "AdaptiveScaling", "ACTIVATIONS", "attach_ads", "detach_ads",
    "propagation_analysis", "PropagationReport", "kernel_gain",
]
