"""advssm.ads: Adaptive Scaling and the error-propagation analysis."""
from ._version import INTERFACE_VERSION, __version__

__all__ = ["__version__", "INTERFACE_VERSION"]
