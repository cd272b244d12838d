"""advssm.cli: the `advssm` command line."""
from ._version import __version__

__all__ = ["__version__"]
