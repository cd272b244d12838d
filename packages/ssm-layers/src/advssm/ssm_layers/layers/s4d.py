"""S4D: the diagonal state space layer with the S4D-Lin initialisation (Gu, Gupta, Goel, Re 2022,
"On the Parameterization and Initialization of Diagonal State Space Models").

Per channel h the layer discretises x' = A x + B u, y = C x + D u by zero-order hold with its
own step dt_h. A is diagonal complex with N/2 modes: ``d_state = N`` counts the real state
size, as in S4D, because each complex mode stands for a conjugate pair (hence the 2 Re).
B is fixed to ones and folded into C (S4D's choice; only the product C B matters):

    dA = exp(dt A),   C' = C (exp(dt A) - 1) / A,
    K_l = 2 Re sum_n C'_n dA_n^l,   y = K * u + D u   (causal convolution).

This module also holds ``LTILayer``, the part that S4D, DSS, S4 and S5 share: argument
checks, parameter registration with an optional SSM learning rate, the convolution ``mix``
and the GELU -> dropout -> Linear(H, 2H) -> GLU output ``project`` (or GELU -> dropout -> Linear(H, H)
with ``glu=False``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import fft_conv, vandermonde_kernel
from .base import SequenceLayer, at_least_fp32, autocast_off, check_backend, conv_backend, positive_int


def log_timescales(n: int, dt_min: float, dt_max: float, owner: str = "layer") -> torch.Tensor:
    """``n`` values of log dt drawn log-uniformly from [dt_min, dt_max] (the S4 family's init)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"{owner}: need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
    return torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


class LTILayer(SequenceLayer):
    """Base of the linear time-invariant layers: y = K * u + D u, then GELU -> dropout -> GLU projection.

    ``glu=True`` (the default, as in the S4 code the paper builds on) projects with Linear(H, 2H) and a
    GLU; ``glu=False`` with a plain Linear(H, H), as the S4D paper writes the layer. Either way the
    projection is ``output_linear``, so checkpoints keep their parameter names. The GLU halves the
    layer's output at initialisation (its gate starts near sigmoid(0) = 1/2) and scales the gradient
    reaching the SSM by the same gate; docs/reproducing.md ("Small-scale recipe") has what that costs
    adversarial training.

    Subclasses create their SSM parameters and implement ``conv_kernel(L) -> (K, D)``; the
    default ``mix`` is the causal FFT convolution with that kernel, so mix and kernel agree
    by construction. ``lr`` is the SSM parameters' learning rate: None trains them like
    every other weight, 0 freezes them (buffers), a positive value tags them with
    ``_optim = {"lr": lr, "weight_decay": 0.0}`` for optimisers that build groups from it.

    Precision: the kernel is computed from the SSM parameters in fp32 (complex64) or better and
    the convolution in fp32, whatever the module's dtype (a half-precision complex exp does not
    exist on the CPU and would lose the kernel's tail); ``mix`` returns the input's dtype.
    """

    is_lti = True
    # why backend="triton" is refused, for a subclass that runs no op with a Triton kernel (else None)
    no_triton: str | None = None

    def __init__(self, d_model: int, d_state: int, dropout: float = 0.0, lr: float | None = None,
                 backend: str = "auto", pairs: bool = True, glu: bool = True):
        super().__init__(d_model)
        owner = type(self).__name__
        positive_int(owner, "d_state", d_state)
        if pairs and d_state % 2:
            raise ValueError(f"{owner}: d_state must be even (it counts N real state dimensions, "
                             f"stored as N/2 complex conjugate pairs), got {d_state}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}: dropout must be a float in [0, 1), got {dropout!r}")
        if lr is not None and (not isinstance(lr, (int, float)) or lr < 0):
            raise ValueError(f"{owner}: lr must be None or a float >= 0, got {lr!r}")
        if not isinstance(glu, bool):
            raise ValueError(f"{owner}: glu must be True (Linear(H, 2H) -> GLU) or False (Linear(H, H)), got {glu!r}")
        self.d_state, self.lr, self.backend = d_state, lr, check_backend(owner, backend, self.no_triton)
        self.glu = glu
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(d_model, 2 * d_model if glu else d_model)

    def register_ssm(self, name: str, tensor: torch.Tensor) -> None:
        """Register an SSM parameter, honouring ``lr`` (see the class docstring)."""
        if self.lr == 0:
            self.register_buffer(name, tensor)
            return
        param = nn.Parameter(tensor)
        if self.lr is not None:
            param._optim = {"lr": float(self.lr), "weight_decay": 0.0}
        self.register_parameter(name, param)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The SSM output y = K * u + D u, (B, L, H) -> (B, L, H), in x's dtype."""
        with autocast_off(x.device):
            K, D = self.conv_kernel(x.shape[1])
            return fft_conv(x.transpose(1, 2), K, D, backend=conv_backend(self.backend)).transpose(1, 2)

    def project(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """GELU -> dropout -> Linear(H, 2H) -> GLU, as in the S4 code (``glu=False``: Linear(H, H), no GLU)."""
        out = self.output_linear(self.dropout(self.activation(y)))
        return F.glu(out, dim=-1) if self.glu else out


class S4D(LTILayer):
    """Diagonal SSM with S4D-Lin init (A_n = -1/2 + i pi n), ZOH, Vandermonde kernel.

    Args:
        d_model: channels H.
        d_state: real state size N per channel (N/2 complex conjugate modes; must be even).
        dropout: dropout rate after the activation.
        dt_min, dt_max: range of the log-uniform init of the step dt per channel.
        lr: learning rate of log dt and A (None: the global one; 0: frozen).
        backend: backend of the Vandermonde kernel op (and, but for "triton", of the FFT convolution).
        glu: output projection Linear(H, 2H) -> GLU (True, the S4 code's) or Linear(H, H) (False, the S4D paper's).

    Example:
        >>> layer = S4D(d_model=8, d_state=4, glu=False)
        >>> layer(torch.rand(2, 16, 8)).shape
        torch.Size([2, 16, 8])
    """

    def __init__(self, d_model: int, d_state: int = 64, dropout: float = 0.0, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, lr: float | None = None, backend: str = "auto", glu: bool = True):
        super().__init__(d_model, d_state, dropout, lr, backend, glu=glu)
        H, N = d_model, d_state // 2
        self.D = nn.Parameter(torch.randn(H))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N, dtype=torch.cfloat)))
        self.register_ssm("log_dt", log_timescales(H, dt_min, dt_max, "S4D"))
        self.register_ssm("log_A_real", torch.full((H, N), math.log(0.5)))
        self.register_ssm("A_imag", math.pi * torch.arange(N, dtype=torch.float).repeat(H, 1))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C', dt A): the ZOH output vector and the discrete log-transition, each (H, N/2) complex."""
        A = torch.complex(-at_least_fp32(self.log_A_real).exp(), at_least_fp32(self.A_imag))
        dtA = A * at_least_fp32(self.log_dt).exp()[:, None]
        return torch.view_as_complex(at_least_fp32(self.C)) * (dtA.exp() - 1) / A, dtA

    def conv_kernel(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K (H, L), D (H,)): the layer's exact causal kernel and skip."""
        C, dtA = self.discrete()
        return vandermonde_kernel(C, dtA, L, backend=self.backend), self.D
