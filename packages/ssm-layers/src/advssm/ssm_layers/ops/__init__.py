"""Functional ops, each with a fast path, a reference and (optionally) a Triton kernel."""
from ._dispatch import BACKENDS, BackendError, resolve_backend
from .diag_scan import diag_scan, diag_scan_ref
from .fftconv import fft_conv, fft_conv_ref
from .selective_scan import selective_scan, selective_scan_ref
from .vandermonde import vandermonde_kernel, vandermonde_kernel_ref

__all__ = [
    "BACKENDS", "BackendError", "resolve_backend",
    "selective_scan", "selective_scan_ref", "diag_scan", "diag_scan_ref",
    "vandermonde_kernel", "vandermonde_kernel_ref", "fft_conv", "fft_conv_ref",
]
