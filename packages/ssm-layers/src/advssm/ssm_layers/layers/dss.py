"""DSS: Diagonal State Spaces (Gupta, Gu, Berant 2022, "Diagonal State Spaces are as Effective
as Structured State Spaces"), the DSS-exp variant.

One diagonal complex Lambda of N/2 modes is shared by all channels, initialised with the
eigenvalues of the normal (skew-symmetric plus -I/2) part of HiPPO-LegS, i.e. S4's Lambda
without the low-rank term; each channel has its own step dt and complex output vector W.
DSS-exp keeps Re(Lambda) < 0 by Lambda = -exp(log_re) + i im, and its kernel

    K_l = 2 Re sum_n W_n (exp(Lambda_n dt) - 1) / Lambda_n exp(Lambda_n dt l)

is exactly the zero-order-hold discretisation of x' = Lambda x + u, y = 2 Re(W x) (we use
DSS-exp rather than DSS-softmax because this ZOH reading makes the layer a true recurrence
with a bounded kernel at every length, which the robustness analysis relies on).
``d_state = N`` counts the real state size, as in S4D (N/2 conjugate modes, hence the 2 Re).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import vandermonde_kernel
from .base import at_least_fp32
from .s4 import legs_normal_eigen
from .s4d import LTILayer, log_timescales


class DSS(LTILayer):
    """Diagonal state space layer, DSS-exp, HiPPO-LegS normal-part init, shared Lambda.

    Args:
        d_model: channels H.
        d_state: real state size N (N/2 complex conjugate modes; must be even).
        dropout: dropout rate after the activation.
        dt_min, dt_max: range of the log-uniform init of dt per channel.
        lr: learning rate of Lambda and log dt (None: the global one; 0: frozen).
        backend: backend of the Vandermonde kernel op (and, but for "triton", of the FFT convolution).
    """

    def __init__(self, d_model: int, d_state: int = 64, dropout: float = 0.0, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, lr: float | None = None, backend: str = "auto"):
        super().__init__(d_model, d_state, dropout, lr, backend)
        H, N = d_model, d_state // 2
        Lam = legs_normal_eigen(d_state)[0][:N]
        self.D = nn.Parameter(torch.randn(H))
        self.W = nn.Parameter(torch.view_as_real(torch.randn(H, N, dtype=torch.cfloat)))
        self.register_ssm("log_dt", log_timescales(H, dt_min, dt_max, "DSS"))
        self.register_ssm("log_lambda_real", (-Lam.real).log().float())
        self.register_ssm("lambda_imag", Lam.imag.float())

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W', Lambda dt): the ZOH output vector and discrete log-transition, each (H, N/2) complex."""
        Lam = torch.complex(-at_least_fp32(self.log_lambda_real).exp(), at_least_fp32(self.lambda_imag))
        dtLam = Lam * at_least_fp32(self.log_dt).exp()[:, None]
        return torch.view_as_complex(at_least_fp32(self.W)) * (dtLam.exp() - 1) / Lam, dtLam

    def conv_kernel(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K (H, L), D (H,)): the layer's exact causal kernel and skip."""
        W, dtLam = self.discrete()
        return vandermonde_kernel(W, dtLam, L, backend=self.backend), self.D
