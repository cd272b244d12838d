"""Adversarial-training methods, each a small class plugged into the one training loop.

``METHODS`` maps a method's name to its class; ``get_method(name, config)`` builds one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import NonFiniteLossError, StepContext, TrainMethod, warmup_scale
from .fast_at import FastAT
from .free_at import FreeAT
from .gaussian import GaussianNoise
from .jacobian import jacobian_frobenius_sq
from .mart import MART, mart_loss
from .pgd_at import PGDAT
from .standard import Standard
from .trades import TRADES
from .yopo import YOPO

if TYPE_CHECKING:  # config derives its method names from METHODS, so it imports this package
    from ..config import TrainConfig

METHODS: dict[str, type[TrainMethod]] = {
    cls.name: cls for cls in (Standard, PGDAT, TRADES, MART, FreeAT, YOPO, FastAT, GaussianNoise)
}


def get_method(name: str, config: TrainConfig) -> TrainMethod:
    """The method called ``name`` configured by ``config``."""
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](config)


__all__ = ["METHODS", "get_method", "TrainMethod", "StepContext", "warmup_scale", "NonFiniteLossError",
           "jacobian_frobenius_sq", "mart_loss", "Standard", "PGDAT", "TRADES", "MART", "FreeAT", "YOPO", "FastAT",
           "GaussianNoise"]
