"""Backend selection shared by every op: ``auto`` | ``triton`` | ``torch`` | ``reference``.

``auto`` picks Triton for CUDA tensors when triton imports, the fast PyTorch path
otherwise. The environment variable ``ADVSSM_BACKEND`` overrides ``auto`` globally.
Asking for ``triton`` where it cannot run raises; there is never a silent fallback.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch", "reference")


class BackendError(RuntimeError):
    """The requested backend cannot run these inputs."""


def triton_status(device: torch.device | None = None) -> tuple[bool, str]:
    """(usable, reason) for the Triton kernels on ``device`` (CUDA, or CPU under TRITON_INTERPRET=1)."""
    from .triton import status  # imported lazily: triton is an optional extra

    return status(device)


def resolve_backend(backend: str, *tensors: torch.Tensor, op: str = "this op", has_triton: bool = True) -> str:
    """The concrete backend ("triton", "torch" or "reference") to run on ``tensors``.

    ``has_triton=False`` is for an op without a Triton kernel (``op`` names it in errors): an
    ``ADVSSM_BACKEND=triton`` override then leaves it on its PyTorch path, while an explicit
    ``backend="triton"`` is refused.

    Raises:
        ValueError: ``backend`` (or ``ADVSSM_BACKEND``) names no backend.
        BackendError: "triton" was asked for where it cannot run; the message says why and what to use.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = next((t.device for t in tensors if isinstance(t, torch.Tensor)), torch.device("cpu"))
    if backend == "auto":
        env = os.environ.get("ADVSSM_BACKEND", "").strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(
                    f"ADVSSM_BACKEND={env!r} is not a backend; set it to one of {', '.join(BACKENDS)}"
                )
            backend = "torch" if env == "triton" and not has_triton else env
        else:
            if has_triton and device.type == "cuda" and triton_status(device)[0]:
                return "triton"
            return "torch"
    if backend == "triton":
        if not has_triton:
            raise BackendError(f"{op} has no Triton kernel (its PyTorch path runs on every device); "
                               "use backend='auto' or 'torch'")
        ok, why = triton_status(device)
        if not ok:
            raise BackendError(f"backend 'triton' cannot run on {device}: {why}. Use backend='torch' instead.")
    return backend
