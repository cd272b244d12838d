"""Triton kernels. Imported only through ``status()`` and the op dispatchers, so that
advssm.ssm_layers works without triton installed."""
from __future__ import annotations

import os

import torch


def status(device: torch.device | None = None) -> tuple[bool, str]:
    """(usable, reason): whether the kernels can run on ``device`` (CUDA, or the CPU under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, (f"triton is not importable ({exc.__class__.__name__}: {exc}); "
                       "pip install 'advssm-ssm-layers[triton]'")
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


def _require(name: str, *tensors: torch.Tensor | None) -> None:
    """Raise one clear error when the kernels cannot run where the tensors live."""
    from .._dispatch import BackendError

    device = next(t.device for t in tensors if isinstance(t, torch.Tensor))
    if any(isinstance(t, torch.Tensor) and t.device != device for t in tensors):
        raise ValueError(f"{name}: all tensors must be on one device; move them to {device}")
    ok, why = status(device)
    if not ok:
        raise BackendError(f"{name}: the Triton kernel cannot run on {device}: {why}; use the op with backend='torch'")


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """Selective scan on the Triton kernels (fp32 compute, output in u's dtype), differentiable in
    every tensor argument. Same arguments and result as ``advssm.ssm_layers.ops.selective_scan``."""
    from ..selective_scan import _check
    from .selective_scan import selective_scan_fn

    _check(u, delta, A, B, C, D, z, delta_bias)
    _require("selective_scan_triton", u, delta, A, B, C, D, z, delta_bias)
    return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def diag_scan_triton(a, b, h0=None):
    """Diagonal linear recurrence h_t = a_t h_{t-1} + b_t along the last dim on the Triton kernels
    (real or complex; fp32 / complex64 compute), differentiable in a, b and h0. Same arguments and
    result as ``advssm.ssm_layers.ops.diag_scan``."""
    from ..diag_scan import _check
    from .diag_scan import diag_scan_fn

    _check(a, b, h0)
    _require("diag_scan_triton", a, b, h0)
    return diag_scan_fn(a, b, h0)


def vandermonde_triton(C, dtA, L):
    """S4D / DSS kernel K[h, l] = 2 Re(sum_n C[h, n] exp(dtA[h, n] l)) on the Triton kernels
    (complex64 compute), differentiable in C and dtA. Same arguments and result as
    ``advssm.ssm_layers.ops.vandermonde_kernel``."""
    from ..vandermonde import _check
    from .vandermonde import vandermonde_fn

    _check(C, dtA, L)
    _require("vandermonde_triton", C, dtA)
    return vandermonde_fn(C, dtA, int(L))
