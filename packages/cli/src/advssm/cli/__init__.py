"""advssm.cli: the `advssm` command line."""
from advssm.ssm_layers.compat import require_interface

from ._version import __version__

for _module, _dist in (("advssm.ssm_layers", "advssm-ssm-layers"), ("advssm.adv_train", "advssm-adv-train"),
                       ("advssm.ads", "advssm-ads")):
    require_interface("advssm-cli", __version__, _module, _dist, supported=(1,))

__all__ = ["__version__"]
