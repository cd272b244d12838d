"""Mega (Ma et al. 2022): a multi-dimensional damped EMA followed by single-head gated attention.

EMA, per channel d and EMA dimension n (n_dim = ``d_state`` of them), alpha and delta in (0, 1):

    h_t[d, n] = alpha[d, n] beta[d, n] x_t[d] + (1 - alpha[d, n] delta[d, n]) h_{t-1}[d, n]
    x'_t[d]   = sum_n gamma[d, n] h_t[d, n] / sqrt(n_dim) + omega[d] x_t[d]

This is a linear time-invariant recurrence, so by default it is computed as a causal
convolution with its kernel K[d, l] = sum_n gamma beta alpha (1 - alpha delta)^l / sqrt(n_dim)
(``fft_conv``, O(L log L)); ``ema="scan"`` computes the recurrence itself with ``diag_scan``
(the backend keyword goes there). ``mix`` returns x' (B, L, d_model): the SSM output, where a
transform (AdS) attaches; omega plays the role of an SSM's D skip.

``project(x', x)`` is the gated attention (single head, over the full causal prefix):

    m = silu(x');   v = silu(W_v x)
    u = sigmoid(W_u m)  (update gate);   z = silu(W_z m);   r = silu(W_r m)  (reset gate)
    q = z * s_q + o_q;   k = z * s_k + o_k   (per-dimension scale and offset of the shared z)
    a = softmax(q k^T / sqrt(z_dim) + causal mask) v
    h = silu(W_h m + U_h (r * a))
    out = dropout(u * h + (1 - u) * x)

Simplifications against the Mega paper: no relative positional bias (the causal EMA already
carries position), no attention or hidden dropout, no normalisation inside the layer (the
model's blocks normalise), and v has width d_model. The output already contains the gated
residual (1 - u) x. Mega is not LTI overall (the attention depends on the input).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import diag_scan, fft_conv
from .attention import causal_attention
from .base import SequenceLayer, at_least_fp32, autocast_off, check_backend, check_dropout, conv_backend

EMA_MODES = ("fft", "scan")


class Mega(SequenceLayer):
    """Moving-average equipped gated attention (Mega), causal, single head.

    Args:
        d_model: model width.
        d_state: EMA dimension n_dim per channel (Mega's default 16).
        z_dim: width of the shared query/key representation z.
        dropout: dropout on the layer output.
        ema: ``"fft"`` (convolution with the EMA kernel, default) or ``"scan"`` (the recurrence).
        backend: backend of the EMA's op: ``diag_scan`` with ``ema="scan"``, ``fft_conv`` with
            ``ema="fft"`` (which has no Triton kernel, so ``"triton"`` needs ``ema="scan"``).
    """

    uses_attention = True

    def __init__(self, d_model: int, d_state: int = 16, z_dim: int = 64, dropout: float = 0.0, ema: str = "fft",
                 backend: str = "auto"):
        super().__init__(d_model)
        name = type(self).__name__
        for key, value in (("d_state", d_state), ("z_dim", z_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {key} must be a positive int, got {value!r}")
        if ema not in EMA_MODES:
            raise ValueError(f"{name}: ema must be one of {', '.join(EMA_MODES)}, got {ema!r}")
        self.d_state, self.z_dim, self.ema = d_state, z_dim, ema
        self.backend = check_backend(
            name, backend, triton=None if ema == "scan" else "ema='fft' runs on torch.fft; pass ema='scan' for "
                                                              "the Triton diagonal scan")

        # EMA parameters. alpha and delta are stored as logits so that sigmoid keeps them in (0, 1)
        # and the decay 1 - alpha * delta in (0, 1): the EMA is stable for any parameter value.
        self.alpha_logit = nn.Parameter(0.2 * torch.randn(d_model, d_state))
        self.delta_logit = nn.Parameter(0.2 * torch.randn(d_model, d_state))
        # beta starts near +-1 alternating over n, so the EMA dimensions start out different.
        signs = torch.ones(d_state).index_fill_(0, torch.arange(1, d_state, 2), -1.0)
        self.beta = nn.Parameter(signs + 0.02 * torch.randn(d_model, d_state))
        self.gamma = nn.Parameter(torch.randn(d_model, d_state))
        self.omega = nn.Parameter(torch.randn(d_model))

        self.v_proj = nn.Linear(d_model, d_model)
        self.gates_proj = nn.Linear(d_model, 3 * d_model + z_dim)  # update gate, z, reset gate, candidate
        self.h_proj = nn.Linear(d_model, d_model)
        # Rows: (query, key). A small scale makes the attention start close to uniform.
        self.qk_scale = nn.Parameter(0.02 * torch.randn(2, z_dim))
        self.qk_offset = nn.Parameter(torch.zeros(2, z_dim))
        self.dropout = nn.Dropout(check_dropout(name, dropout))

    def ema_coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decay, input gain, output weight), each (d_model, n_dim): h_t = decay h_{t-1} + gain x_t, y = weight . h."""
        alpha = torch.sigmoid(at_least_fp32(self.alpha_logit))
        decay = 1.0 - alpha * torch.sigmoid(at_least_fp32(self.delta_logit))
        return decay, alpha * at_least_fp32(self.beta), at_least_fp32(self.gamma) / math.sqrt(self.d_state)

    def ema_kernel(self, L: int) -> torch.Tensor:
        """The EMA's convolution kernel K (d_model, L), without the omega skip."""
        decay, gain, weight = self.ema_coefficients()
        powers = torch.exp(torch.arange(L, device=decay.device, dtype=decay.dtype) * torch.log(decay)[..., None])
        return torch.einsum("dn,dnl->dl", gain * weight, powers)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The EMA output x' = EMA(x) + omega * x, (B, L, d_model), in x's dtype (computed in fp32 or better)."""
        with autocast_off(x.device):  # autocast would run the EMA's einsums in half precision
            u = x.transpose(1, 2)  # (B, d_model, L)
            omega = at_least_fp32(self.omega)
            if self.ema == "fft":
                y = fft_conv(u, self.ema_kernel(u.shape[-1]), D=omega, backend=conv_backend(self.backend))
            else:
                decay, gain, weight = self.ema_coefficients()
                states = diag_scan(decay[..., None], gain[..., None] * u[:, :, None, :], backend=self.backend)
                y = torch.einsum("bdnl,dn->bdl", states, weight) + omega[:, None] * u
        return y.to(x.dtype).transpose(1, 2)

    def project(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gated attention on the EMA output ``y`` with values and gated residual from the layer input ``x``."""
        m = F.silu(y)
        v = F.silu(self.v_proj(x))
        update, zr, candidate = self.gates_proj(m).split([self.d_model, self.z_dim + self.d_model, self.d_model], -1)
        z, reset = F.silu(zr).split([self.z_dim, self.d_model], dim=-1)
        q, k = (z * self.qk_scale[i] + self.qk_offset[i] for i in range(2))
        # sdpa scales by 1/sqrt(z_dim) (the query width); a head dimension of 1 gives the single head.
        attended = causal_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        h = F.silu(candidate + self.h_proj(reset * attended))
        # the gated residual in the residual stream's dtype: under autocast h is half precision while x, after a
        # LayerNorm (prenorm), is fp32, and lerp refuses mixed dtypes
        return self.dropout(torch.lerp(x, h.to(x.dtype), torch.sigmoid(update).to(x.dtype)))
