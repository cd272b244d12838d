"""advssm.adv_train: attacks, robust evaluation and adversarial-training engines for any nn.Module."""
from ._version import INTERFACE_VERSION, __version__

__all__ = ["__version__", "INTERFACE_VERSION"]
