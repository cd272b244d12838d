"""S5: the simplified MIMO state space layer (Smith, Warrington, Linderman 2023, "Simplified
State Space Layers for Sequence Modeling").

One complex diagonal state of size P = ``d_state`` is shared by all H channels:

    x_t = Lambda_bar x_{t-1} + B_bar u_t,   y_t = Re(C x_t) + D u_t,
    Lambda_bar = exp(Lambda dt),   B_bar = (Lambda_bar - 1) / Lambda * B   (zero-order hold),

with B (P, H), C (H, P) complex, D (H,) real and one log timescale dt per state. The
recurrence runs through ``diag_scan`` (no Python loop over time). We keep all P modes and
take Re(C x) without S5's conjugate-symmetry trick (which stores P/2 modes and doubles the
real part), so d_state is exactly the number of complex modes.
Lambda starts at the P eigenvalues of the HiPPO-N matrix (the normal part of HiPPO-LegS);
B and C start complex Gaussian with variance 1/H and 1/P (the eigenbasis is unitary, so
S5's rotation of a Gaussian B into it changes nothing in distribution).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import diag_scan
from .base import at_least_fp32, autocast_off, positive_int
from .s4 import legs_normal_eigen
from .s4d import LTILayer, log_timescales


class S5(LTILayer):
    """MIMO diagonal SSM with a parallel scan.

    Args:
        d_model: channels H (input and output).
        d_state: number P of complex state modes.
        dropout: dropout rate after the activation.
        dt_min, dt_max: range of the log-uniform init of the timescale per state.
        lr: learning rate of Lambda, B and log dt (None: the global one; 0: frozen).
        backend: backend of the diagonal scan op.
    """

    def __init__(self, d_model: int, d_state: int = 64, dropout: float = 0.0, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, lr: float | None = None, backend: str = "auto"):
        super().__init__(d_model, d_state, dropout, lr, backend, pairs=False)
        H, P = d_model, d_state
        Lam = legs_normal_eigen(P)[0]
        self.D = nn.Parameter(torch.randn(H))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, P, dtype=torch.cfloat) / math.sqrt(P)))
        self.register_ssm("B", torch.view_as_real(torch.randn(P, H, dtype=torch.cfloat) / math.sqrt(H)))
        self.register_ssm("log_dt", log_timescales(P, dt_min, dt_max, "S5"))
        self.register_ssm("log_lambda_real", (-Lam.real).log().float())
        self.register_ssm("lambda_imag", Lam.imag.float())

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Lambda dt (P,), B_bar (P, H), C (H, P)), complex; Lambda_bar = exp(Lambda dt)."""
        Lam = torch.complex(-at_least_fp32(self.log_lambda_real).exp(), at_least_fp32(self.lambda_imag))
        dtLam = Lam * at_least_fp32(self.log_dt).exp()
        B_bar = ((dtLam.exp() - 1) / Lam)[:, None] * torch.view_as_complex(at_least_fp32(self.B))
        return dtLam, B_bar, torch.view_as_complex(at_least_fp32(self.C))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """y = Re(C x) + D u with the state from the parallel scan, (B, L, H) -> (B, L, H), in x's dtype."""
        with autocast_off(x.device):
            dtLam, B_bar, C = self.discrete()
            u = x.transpose(1, 2)  # (B, H, L)
            states = diag_scan(dtLam.exp()[:, None], torch.einsum("ph,bhl->bpl", B_bar, u.to(B_bar.dtype)),
                               backend=self.backend)
            y = torch.einsum("hp,bpl->bhl", C, states).real + at_least_fp32(self.D)[:, None] * u
        return y.to(x.dtype).transpose(1, 2)

    def conv_kernel(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K (H_out, H_in, L), D (H,)): K[h, j, l] = Re(C Lambda_bar^l B_bar)[h, j]."""
        L = positive_int("S5.conv_kernel", "L", L)
        dtLam, B_bar, C = self.discrete()
        powers = (dtLam[:, None] * torch.arange(L, device=dtLam.device, dtype=dtLam.real.dtype)).exp()  # (P, L)
        return torch.einsum("hp,pl,pj->hjl", C, powers, B_bar).real, self.D
