"""Registry of output transforms: modules applied to an SSM layer's output before its
output projection (the slot where Adaptive Scaling attaches).

Other packages register transforms through the entry-point group ``advssm.transforms``
(name -> class); ``register_transform`` does the same at run time. A transform class is
called as ``cls(dim, **options)`` and must map (..., dim) -> (..., dim).
"""
from __future__ import annotations

from importlib.metadata import entry_points

from torch import nn

ENTRY_POINT_GROUP = "advssm.transforms"
_REGISTRY: dict[str, type[nn.Module]] = {"identity": nn.Identity}


class UnknownTransformError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_transform(name: str, cls: type[nn.Module]) -> None:
    _REGISTRY[name] = cls


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_transforms() -> list[str]:
    """Names of every registered transform (entry points are listed, not imported)."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_transform(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        ep = _entry_points().get(name)
        if ep is not None:
            try:
                _REGISTRY[name] = ep.load()
            except Exception as exc:
                raise UnknownTransformError(
                    f"output transform {name!r} is registered by {ep.value!r} but failed to import: "
                    f"{exc.__class__.__name__}: {exc}. Reinstall the package that provides it."
                ) from exc
    if name not in _REGISTRY:
        hint = (" (install advssm-ads from a clone of the repository: pip install ./packages/ads)" if name == "ads"
                else "")
        raise UnknownTransformError(
            f"unknown output transform {name!r}{hint}; registered: {', '.join(sorted(_REGISTRY))}. "
            f"Packages add transforms through the {ENTRY_POINT_GROUP!r} entry-point group."
        )
    return _REGISTRY[name]


def build_transform(name: str, dim: int, **options) -> nn.Module:
    if name == "identity":
        return nn.Identity()
    return get_transform(name)(dim, **options)
