"""The leaf of the ops package: backend names, ``BackendError`` and the Triton probe.

Imports only the standard library and torch; triton itself is imported inside the probe,
so that advssm.ssm_layers works without it.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch", "reference")


class BackendError(RuntimeError):
    """The requested backend cannot run these inputs (or its kernel failed its first-use check)."""


class KernelCheckWarning(RuntimeWarning):
    """A Triton kernel disagreed with the PyTorch path on this device; ``backend="auto"`` runs the PyTorch path."""


class DoubleBackwardWarning(UserWarning):
    """Under ``double_backward()`` an op or layer runs its twice-differentiable path in place of the one it
    would run otherwise (a Triton kernel, a fast path or fused attention with a first-order backward only).
    Said once per process and substitution."""


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter on the CPU (``TRITON_INTERPRET=1``, read by
    triton when it is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_version() -> str:
    """The installed triton's version, or a short reason it is not importable."""
    try:
        import triton
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"not importable ({exc.__class__.__name__})"
    return str(getattr(triton, "__version__", "unknown"))


def triton_status(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(usable, reason): whether the Triton kernels can run on ``device`` (CUDA, or the CPU under
    ``TRITON_INTERPRET=1``). Imports triton, nothing else of it."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, (f"triton is not importable ({exc.__class__.__name__}: {exc}); "
                       "pip install triton (or, in a clone of the repository, "
                       "pip install './packages/ssm-layers[triton]')")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        if interpreting():
            return False, "TRITON_INTERPRET=1 runs kernels on the CPU only; move the tensors to the CPU"
        return True, "CUDA device and triton available"
    if device.type == "cpu":
        if interpreting():
            return True, "TRITON_INTERPRET=1: kernels run in the interpreter on the CPU (slow, for testing)"
        return False, "triton needs a CUDA device (or TRITON_INTERPRET=1 set before importing triton, for testing)"
    return False, f"triton does not support device type {device.type!r}"


def device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)``, or ``cpu (Triton interpreter)``: what a message about a kernel names."""
    if device.type == "cuda":
        try:
            return f"{device} ({torch.cuda.get_device_name(device)})"
        except Exception:  # pragma: no cover - a device that cannot be queried is still named
            return str(device)
    return f"{device} (Triton interpreter)" if device.type == "cpu" and interpreting() else str(device)
