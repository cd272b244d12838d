"""S6: the Mamba block (Gu & Dao 2023), an input-dependent (selective) SSM.

    x, z = in_proj(u)                               (B, L, d_inner) each, d_inner = expand * d_model
    x = silu(causal depthwise conv1d(x))            width d_conv
    dt, B, C = x_proj(x)                            dt_rank, N, N features per token
    delta = dt_proj.weight @ dt                     dt_proj.bias enters the scan as delta_bias
    y = selective_scan(x, delta, A, B, C, D, z, delta_bias, delta_softplus=True)   # gated by silu(z)

``mix`` returns y (B, L, d_inner), the SSM output where a transform (AdS) attaches;
``project`` is dropout -> out_proj. B, C and delta depend on the input, so S6 is not LTI but selective
(``is_selective``); ``selective_internals(x)`` exposes delta and the state's energy for the internal attacks of
``advssm.ads.internal_attacks``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import selective_scan
from .base import SequenceLayer, at_least_fp32, check_backend, check_dropout, positive_int


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, for y > 0 (stable for small y: log(expm1(y)) = y + log(1 - exp(-y)))."""
    return y + torch.log(-torch.expm1(-y))


class S6(SequenceLayer):
    """The Mamba block: selective SSM with a causal depthwise convolution and a SiLU gate.

    Example:
        >>> layer = S6(d_model=8, d_state=4)
        >>> layer(torch.rand(2, 16, 8)).shape
        torch.Size([2, 16, 8])

    Args:
        d_model: model width H.
        d_state: state size N per inner channel (Mamba default 16).
        d_conv: width of the causal depthwise convolution.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the delta projection; ``"auto"`` means ceil(d_model / 16).
        dt_min, dt_max: the initial step sizes are drawn log-uniformly in [dt_min, dt_max].
        dropout: dropout before the output projection.
        backend: backend of the selective scan (``auto``, ``triton``, ``torch``, ``reference``).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dropout: float = 0.0, backend: str = "auto"):
        super().__init__(d_model)
        name = type(self).__name__
        self.d_state = positive_int(name, "d_state", d_state)
        self.d_conv = positive_int(name, "d_conv", d_conv)
        self.d_inner = positive_int(name, "expand", expand) * d_model
        if dt_rank != "auto" and (isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"{name}: dt_rank must be a positive int or 'auto', got {dt_rank!r}")
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float)) and 0 < dt_min <= dt_max):
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        self.backend = check_backend(name, backend)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.dropout = nn.Dropout(check_dropout(name, dropout))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # Keep the initial delta = softplus(dt_proj(dt)) near the drawn step sizes: a small weight,
        # and a bias that is the inverse softplus of a log-uniform step in [dt_min, dt_max].
        with torch.no_grad():
            bound = self.dt_rank ** -0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            self.dt_proj.bias.copy_(inverse_softplus(log_dt.exp().clamp(min=1e-4)))
        # S4D-real initialisation: A[:, n] = -(n + 1), stored as a log so A stays negative (stable).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        # As in Mamba, A and D are exempt from weight decay; the tag follows the package's ``_optim``
        # convention (see ``LTILayer``) for optimisers that build parameter groups from it.
        for param in (self.A_log, self.D):
            param._optim = {"weight_decay": 0.0}

    is_selective = True

    @property
    def transform_dim(self) -> int:
        return self.d_inner

    def _scan_inputs(self, x: torch.Tensor):
        """(u, z, delta before bias and softplus, B, C): u, z, delta (B, d_inner, L), B and C (B, L, N)."""
        L = x.shape[1]
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        u = F.silu(self.conv1d(u)[..., :L])  # padding d_conv - 1 then truncation keeps the conv causal
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # bias added inside the scan, before softplus
        return u, z, delta, B, C

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Gated selective-scan output, (B, L, d_inner)."""
        # the scan computes in fp32 whatever it is given; under autocast it is handed fp32 inputs all the same,
        # as in the H200's timings (docs/performance.md)
        inputs = self._scan_inputs(x)
        dtype = inputs[0].dtype  # y in the dtype u had, as before: a half-precision model stays half
        u, z, delta, B, C = (at_least_fp32(t) for t in inputs)
        y = selective_scan(
            u, delta, -torch.exp(at_least_fp32(self.A_log)), B.transpose(1, 2), C.transpose(1, 2),
            at_least_fp32(self.D), z=z, delta_bias=at_least_fp32(self.dt_proj.bias), delta_softplus=True,
            backend=self.backend,
        )
        return y.to(dtype).transpose(1, 2)

    def project(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Dropout, then out_proj back to (B, L, d_model); ``x`` is unused."""
        return self.out_proj(self.dropout(y))

    def selective_internals(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The input-dependent internals for the layer input ``x`` (B, L, d_model):

        - ``delta``: the step sizes softplus(dt_proj(dt) + bias) the scan uses, (B, L, d_inner);
        - ``state_energy``: the squared norm of the state after each step, summed over the channels, (B, L),
          from the plain recurrence h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t (differentiable; one step
          at a time, so slow on long sequences).

        Example:
            >>> internals = S6(d_model=8, d_state=4).selective_internals(torch.randn(2, 5, 8))
            >>> internals["delta"].shape, internals["state_energy"].shape
            (torch.Size([2, 5, 16]), torch.Size([2, 5]))
        """
        self._check_input(x)
        u, _, delta, B, _ = self._scan_inputs(x)
        delta = F.softplus(at_least_fp32(delta) + at_least_fp32(self.dt_proj.bias)[:, None])  # (B, d_inner, L)
        u, B = at_least_fp32(u), at_least_fp32(B)
        A = -torch.exp(at_least_fp32(self.A_log))  # (d_inner, N)
        h = u.new_zeros(u.shape[0], self.d_inner, self.d_state)
        energy = []
        for t in range(u.shape[-1]):
            d = delta[..., t, None]  # (B, d_inner, 1)
            h = torch.exp(d * A) * h + (d * u[..., t, None]) * B[:, t, None, :]
            energy.append(h.pow(2).sum(dim=(1, 2)))
        return {"delta": delta.transpose(1, 2), "state_energy": torch.stack(energy, dim=1)}
