"""advssm.ssm_layers: deep SSM layers, classifier backbone, kernels and checkpoints."""
from ._version import INTERFACE_VERSION, __version__
from .ops import diag_scan, fft_conv, selective_scan, vandermonde_kernel
from .transforms import available_transforms, build_transform, get_transform, register_transform

__all__ = [
    "__version__", "INTERFACE_VERSION",
    "selective_scan", "diag_scan", "vandermonde_kernel", "fft_conv",
    "register_transform", "get_transform", "build_transform", "available_transforms",
]
