"""Interface versions between the advssm packages.

Each package declares an integer ``INTERFACE_VERSION`` that changes when its public
interface changes incompatibly. A package that builds on another checks, at import, that
the installed one speaks an interface it supports, and fails with both versions named
instead of with an AttributeError deep inside a run.
"""
from __future__ import annotations

from importlib import import_module


class IncompatibleInterfaceError(ImportError):
    """Two installed advssm packages do not speak a common interface version."""


def require_interface(consumer: str, consumer_version: str, provider_module: str, provider_dist: str,
                      supported: tuple[int, ...]) -> None:
    """Raise ``IncompatibleInterfaceError`` unless ``provider_module.INTERFACE_VERSION`` is in ``supported``."""
    provider = import_module(provider_module)
    found = getattr(provider, "INTERFACE_VERSION", None)
    if found not in supported:
        wanted = " or ".join(str(v) for v in supported)
        raise IncompatibleInterfaceError(
            f"{consumer} {consumer_version} needs {provider_dist} interface {wanted}, but the installed "
            f"{provider_dist} {getattr(provider, '__version__', '?')} provides interface {found}; "
            f"install versions that match (see {consumer}'s declared dependency range)"
        )
