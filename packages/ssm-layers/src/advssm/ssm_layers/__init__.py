"""advssm.ssm_layers: deep SSM layers, the classifier backbone, kernels and checkpoints.

    from advssm.ssm_layers import build_model, preset, save_checkpoint, load_checkpoint
    model = build_model(preset("mnist", layer="s4d"))
    logits = model(images)                  # (B, 1, 28, 28) in [0, 1] -> (B, 10)

Layers, the model and checkpoints are imported on first use (PEP 562), so importing the
functional ops stays light.
"""
from importlib import import_module

from ._version import INTERFACE_VERSION, __version__
from .ops import BackendError, diag_scan, fft_conv, selective_scan, vandermonde_kernel
from .transforms import available_transforms, build_transform, get_transform, register_transform

_LAZY = {
    "LAYERS": "layers", "SequenceLayer": "layers", "S4": "layers", "S4D": "layers", "DSS": "layers",
    "S5": "layers", "Mega": "layers", "S6": "layers", "Mamba2": "layers",
    "Attention": "layers",
    "ModelConfig": "model", "SequenceClassifier": "model", "build_model": "model", "preset": "model",
    "PRESETS": "model",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "read_metadata": "checkpoint",
    "CheckpointError": "checkpoint", "FORMAT_VERSION": "checkpoint",
    "backends": "backend_status",
}

__all__ = [
    "__version__", "INTERFACE_VERSION", "BackendError",
    "selective_scan", "diag_scan", "vandermonde_kernel", "fft_conv",
    "register_transform", "get_transform", "build_transform", "available_transforms",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
