"""The layer zoo: one file per layer, all keeping the contract of ``base.SequenceLayer``."""
from .attention import Attention
from .base import SequenceLayer
from .dss import DSS
from .mamba2 import Mamba2
from .mega import Mega
from .s4 import S4
from .s4d import S4D
from .s5 import S5
from .s6 import S6

LAYERS: dict[str, type[SequenceLayer]] = {
    "s4": S4,
    "s4d": S4D,
    "dss": DSS,
    "s5": S5,
    "mega": Mega,
    "s6": S6,
    "mamba2": Mamba2,
    "attention": Attention,
}

__all__ = ["LAYERS", "SequenceLayer", "S4", "S4D", "DSS", "S5", "Mega", "S6", "Mamba2", "Attention"]
