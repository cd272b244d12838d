"""The contract every layer of the zoo keeps.

A layer maps (batch, length, d_model) -> (batch, length, d_model), causally (``is_causal``: output t
depends on inputs 1..t only; every zoo layer is; the scan wrappers of ``scans.py`` are not). SSM layers
split their forward into three named steps so that transforms and the error-propagation
analysis can reach inside without knowing the layer:

    y = layer.mix(x)                      # the sequence mixer (SSM + D skip), (B, L, transform_dim)
    y = layer.output_transform(y)         # identity by default; AdS attaches here
    out = layer.project(y, x)             # activation, dropout, output projection -> (B, L, d_model)

(``project`` receives the layer input ``x`` too, for layers such as Mega whose output
gate mixes the input back in; most layers ignore it.)

``transform_dim`` is the feature size of ``y`` (d_model, or the inner width for S6).
The class attributes say what kind of mixer a layer is, for the code that must know (the analysis, IBP, the
internal attacks, the findings study): ``is_lti`` (S4, S4D, DSS, S5), ``is_selective`` (S6, Mamba-2) and
``uses_attention`` (Mega, attention).
Linear time-invariant layers set ``is_lti = True`` and implement
``conv_kernel(L)``, returning (K, D): K of shape (H, L) for per-channel (SISO) kernels
or (H_out, H_in, L) for MIMO ones, and D of shape (H,) or (H_out, H_in) or None.
``make_output_transform(build)`` builds the module for the transform slot from ``build(dim)``
(``build(transform_dim)``; the scan wrappers build one per direction).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..ops import BACKENDS


def positive_int(owner: str, name: str, value) -> int:
    """``value`` if it is a positive int (not a bool), else a ValueError naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def check_dropout(owner: str, dropout) -> float:
    """Validate a dropout probability (shared by the layers of this package)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}: dropout must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)


def check_backend(owner: str, backend, triton: str | None = None) -> str:
    """Validate a backend name at construction rather than at the first forward.

    ``triton``: None when the layer runs an op with a Triton kernel; otherwise the reason it has
    none, and ``backend="triton"`` is refused with it (a layer never ignores a request for Triton).
    """
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "triton" and triton is not None:
        raise ValueError(f"{owner}: backend='triton' is not available: {triton}; use backend='auto' or 'torch'")
    return backend


def conv_backend(backend: str) -> str:
    """The ``fft_conv`` backend for a layer's backend: it has no Triton kernel, so "triton" means "auto"
    there (torch.fft, cuFFT on CUDA), while "torch" and "reference" carry over."""
    return "auto" if backend == "triton" else backend


def autocast_off(device: torch.device):
    """A region where autocast does not lower einsums and matmuls to half precision: an SSM's kernel
    and recurrence are computed in fp32 (or better) by design."""
    return torch.autocast(device_type=device.type, enabled=False)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Parameters that enter exp() or a long recurrence are used in fp32 or better, whatever the module dtype."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class SequenceLayer(nn.Module):
    """Base class: checks the input shape and runs mix -> output_transform -> project."""

    has_output_transform = True
    is_lti = False
    is_selective = False  # step size and B, C computed from the input (S6, Mamba-2)
    uses_attention = False  # mixes positions by attention weights (Mega, attention): not a pure SSM
    is_causal = True  # output t depends on inputs 1..t only

    def __init__(self, d_model: int):
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"{type(self).__name__}: d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model
        self.output_transform: nn.Module = nn.Identity()

    @property
    def transform_dim(self) -> int:
        return self.d_model

    def make_output_transform(self, build: Callable[[int], nn.Module]) -> nn.Module:
        """The module for the transform slot, from ``build(feature_size)``: ``build(transform_dim)``."""
        return build(self.transform_dim)

    def mix(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def project(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def conv_kernel(self, L: int):  # pragma: no cover - LTI layers override
        raise NotImplementedError(f"{type(self).__name__} is not a linear time-invariant layer")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (batch, length, d_model={self.d_model}), "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.project(self.output_transform(self.mix(x)), x)
