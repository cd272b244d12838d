"""Triton kernels. Imported only through ``status()`` and the op dispatchers, so that
advssm.ssm_layers works without triton installed."""
from __future__ import annotations

import os

import torch


def status(device: torch.device | None = None) -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, f"triton is not importable ({exc.__class__.__name__}: {exc}); pip install 'advssm-ssm-layers[triton]'"
    device = torch.device(device) if device is not None else torch.device("cpu")
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type == "cuda":
        if interpret:
            return False, "TRITON_INTERPRET=1 runs kernels on the CPU only; move the tensors to the CPU"
        return True, "CUDA device and triton available"
    if device.type == "cpu":
        if interpret:
            return True, "TRITON_INTERPRET=1: kernels run in the interpreter on the CPU (slow, for testing)"
        return False, "triton needs a CUDA device (or TRITON_INTERPRET=1 set before importing triton, for testing)"
    return False, f"triton does not support device type {device.type!r}"


def _not_yet(*_a, **_k):
    raise NotImplementedError("Triton kernels are not implemented yet")


selective_scan_triton = _not_yet
diag_scan_triton = _not_yet
vandermonde_triton = _not_yet
