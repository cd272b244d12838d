"""Functional ops, each with a sequential reference, a fast PyTorch path and (optionally) a Triton kernel.

    from advssm.ssm_layers.ops import selective_scan
    y = selective_scan(u, delta, A, B, C, backend="auto")   # or "triton", "torch", "reference"

Layering (imports point one way): ``_backend`` (backend names, ``BackendError``, the Triton
probe) <- ``_dispatch`` (the ``Op`` record, the one ``dispatch`` function, the first-use
kernel check) <- one module per op (input check, reference, PyTorch path, ``Op`` entry).
The kernels in ``ops/triton`` import only torch and triton and are loaded by name on first use.
"""
from ._backend import BACKENDS, BackendError, DoubleBackwardWarning, KernelCheckWarning, triton_status
from ._dispatch import (
    FWD_TOL,
    GRAD_TOL,
    Op,
    compare,
    double_backward,
    double_backward_enabled,
    kernel_checks,
    kernel_entry_point,
    kernel_override,
    reset_kernel_checks,
    resolve_backend,
    say_double_backward,
    tolerance,
)
from .diag_scan import DIAG_SCAN, diag_scan, diag_scan_ref
from .fftconv import FFT_CONV, fft_conv, fft_conv_ref
from .selective_scan import SELECTIVE_SCAN, selective_scan, selective_scan_ref
from .ssd import SSD, ssd, ssd_reference
from .vandermonde import VANDERMONDE_KERNEL, vandermonde_kernel, vandermonde_kernel_ref

# The op table: every op, by public name.
OPS: dict[str, Op] = {op.name: op for op in (SELECTIVE_SCAN, DIAG_SCAN, VANDERMONDE_KERNEL, FFT_CONV, SSD)}

__all__ = [
    "BACKENDS", "BackendError", "KernelCheckWarning", "resolve_backend", "triton_status", "Op", "OPS",
    "FWD_TOL", "GRAD_TOL", "tolerance", "compare", "kernel_checks", "reset_kernel_checks", "kernel_entry_point",
    "kernel_override", "double_backward", "double_backward_enabled", "say_double_backward", "DoubleBackwardWarning",
    "selective_scan", "selective_scan_ref", "diag_scan", "diag_scan_ref",
    "vandermonde_kernel", "vandermonde_kernel_ref", "fft_conv", "fft_conv_ref", "ssd", "ssd_reference",
]
