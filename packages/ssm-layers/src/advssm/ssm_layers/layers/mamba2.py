"""Mamba-2 (Dao & Gu 2024): the state-space-duality (SSD) block, heads of ``head_dim`` channels with one
scalar decay per head and B, C shared within ``n_groups`` groups.

    z, xBC, dt = in_proj(u)                         d_inner, d_inner + 2 G N, nheads features per token
    x, B, C = silu(causal depthwise conv1d(xBC))    width d_conv, over x, B and C together
    y = ssd(x, dt, A, B, C, D, z, dt_bias, dt_softplus=True, dt_limit)    # (y + D x) * silu(z)
    out = out_proj(RMSNorm_G(y))                    RMS taken per group of d_inner / G channels

The parameter names and shapes are those of ``mamba_ssm``'s ``Mamba2`` and ``transformers``'
``Mamba2Mixer`` (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``, ``out_proj``), so
their weights load with ``load_state_dict(strict=True)`` (their gated norm gates before normalising,
``norm_before_gate=False``, which is what this layer computes).

Where the output transform (AdS) attaches: ``mix`` returns the gated SSM output ``(y + D x) * silu(z)``,
(B, L, d_inner), the same point as in S6 (the gated scan output); ``project`` is the grouped RMSNorm,
dropout and ``out_proj``. The RMSNorm follows the transform, so a transform that multiplies every channel
of a group by one common factor is undone by it (up to eps); AdS scales each channel separately and
adds a shift, which the norm does not cancel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import SSD, ssd
from .base import SequenceLayer, at_least_fp32, check_backend, check_dropout, positive_int
from .s6 import inverse_softplus

DEFAULT_HEAD_DIM = 64  # mamba_ssm's and transformers' default


class GroupedRMSNorm(nn.Module):
    """RMSNorm over groups of ``group_size`` channels, times a learned per-channel ``weight``.

    Computed in fp32 at least (fp64 kept), returned in the input's dtype.

        norm = GroupedRMSNorm(256, group_size=128)
        out = norm(torch.randn(2, 10, 256))
    """

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        if dim % group_size:
            raise ValueError(f"GroupedRMSNorm: dim={dim} is not a multiple of group_size={group_size}")
        self.group_size, self.eps = group_size, float(eps)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        work = at_least_fp32(y)
        groups = work.unflatten(-1, (-1, self.group_size))
        normed = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return (at_least_fp32(self.weight) * normed).to(y.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}"


class Mamba2(SequenceLayer):
    """The Mamba-2 block: the SSD scan with a causal depthwise convolution, a SiLU gate and a grouped RMSNorm.

    Args:
        d_model: model width H.
        d_state: state size N per head (``mamba_ssm``'s default is 128; 64 here, the CIFAR preset's).
        head_dim: channels per head P; nheads = d_inner / head_dim. None (the default): 64, ``mamba_ssm``'s
            default, or d_inner when the layer is narrower than that (one head of d_inner channels). An explicit
            head_dim must divide d_inner.
        n_groups: groups G sharing B and C (and the RMSNorm groups); nheads must be a multiple of G.
        d_conv: width of the causal depthwise convolution.
        expand: d_inner = expand * d_model.
        chunk_size: the chunk length of the SSD scan (the result does not depend on it beyond rounding).
        dt_min, dt_max, dt_init_floor: initial step sizes are log-uniform in [dt_min, dt_max], at least the floor.
        dt_limit: (min, max) the step sizes are clamped to after softplus; (0, inf) is no clamp.
        A_init_range: the initial -A per head is uniform in this range (``mamba_ssm``'s (1, 16)).
        norm_eps: epsilon of the grouped RMSNorm.
        dropout: dropout before the output projection.
        backend: backend of the SSD scan (``auto``, ``triton``, ``torch``, ``reference``).

    Example:
        >>> layer = Mamba2(64, d_state=16, head_dim=32, n_groups=2, chunk_size=64)
        >>> layer(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    is_selective = True

    def __init__(self, d_model: int, d_state: int = 64, head_dim: int | None = None, n_groups: int = 1, d_conv: int = 4,
                 expand: int = 2, chunk_size: int = 256, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4, dt_limit=(0.0, float("inf")), A_init_range=(1.0, 16.0),
                 norm_eps: float = 1e-5, dropout: float = 0.0, backend: str = "auto"):
        super().__init__(d_model)
        name = type(self).__name__
        self.d_state = positive_int(name, "d_state", d_state)
        self.n_groups = positive_int(name, "n_groups", n_groups)
        self.d_conv = positive_int(name, "d_conv", d_conv)
        self.chunk_size = positive_int(name, "chunk_size", chunk_size)
        self.d_inner = positive_int(name, "expand", expand) * d_model
        head_dim = min(DEFAULT_HEAD_DIM, self.d_inner) if head_dim is None else head_dim
        self.head_dim = positive_int(name, "head_dim", head_dim)
        if self.d_inner % head_dim:
            divisors = [p for p in range(1, self.d_inner + 1) if self.d_inner % p == 0]
            raise ValueError(f"{name}: d_inner = expand * d_model = {self.d_inner} is not a multiple of "
                             f"head_dim={head_dim}; choose a head_dim that divides it ({_few(divisors)})")
        self.nheads = self.d_inner // head_dim
        if self.nheads % n_groups:
            raise ValueError(f"{name}: the number of heads d_inner / head_dim = {self.nheads} is not a multiple of "
                             f"n_groups={n_groups}; choose n_groups dividing {self.nheads} "
                             f"({_few([g for g in range(1, self.nheads + 1) if self.nheads % g == 0])})")
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float)) and 0 < dt_min <= dt_max):
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        self.dt_limit = _pair(name, "dt_limit", dt_limit, low=0.0)
        A_lo, A_hi = _pair(name, "A_init_range", A_init_range, low=0.0)
        if A_lo <= 0:
            raise ValueError(f"{name}: A_init_range must be (lo, hi) with 0 < lo <= hi, got {A_init_range!r}")
        if not isinstance(norm_eps, (int, float)) or isinstance(norm_eps, bool) or not norm_eps > 0:
            raise ValueError(f"{name}: norm_eps must be a positive number, got {norm_eps!r}")
        self.backend = check_backend(name, backend, triton=None if SSD.kernel else "the SSD op has no Triton kernel")

        conv_dim = self.d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        # The initial step sizes: log-uniform in [dt_min, dt_max] (floored), stored as the inverse softplus.
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(inverse_softplus(dt.clamp(min=dt_init_floor)))
        # One negative decay A = -exp(A_log) per head, stored as a log so it stays negative.
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(A_lo, A_hi)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GroupedRMSNorm(self.d_inner, self.d_inner // n_groups, norm_eps)
        self.dropout = nn.Dropout(check_dropout(name, dropout))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        # As in Mamba, the SSM's own parameters are exempt from weight decay (see S6).
        for param in (self.A_log, self.D, self.dt_bias):
            param._optim = {"weight_decay": 0.0}

    @property
    def transform_dim(self) -> int:
        return self.d_inner

    def _scan_inputs(self, x: torch.Tensor):
        """(u, dt, B, C, z) for the scan: u, z (b, L, nheads, head_dim); dt (b, L, nheads) before bias and
        softplus; B, C (b, L, n_groups, d_state)."""
        b, L, _ = x.shape
        gn = self.n_groups * self.d_state
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1)
        # padding d_conv - 1 on both sides then keeping the first L outputs keeps the convolution causal
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L]).transpose(1, 2)
        u, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        heads = (b, L, self.nheads, self.head_dim)
        groups = (b, L, self.n_groups, self.d_state)
        return u.reshape(heads), dt, B.reshape(groups), C.reshape(groups), z.reshape(heads)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The gated SSD output (y + D x) * silu(z), (B, L, d_inner)."""
        # fp32 into the SSD under autocast, as S6 does: the op computes in fp32 anyway, and these are the inputs of
        # the H200's timings (docs/performance.md)
        inputs = self._scan_inputs(x)
        dtype = inputs[0].dtype  # y in the dtype x had, as before: a half-precision model stays half
        u, dt, B, C, z = (None if t is None else at_least_fp32(t) for t in inputs)
        y = ssd(u, dt, -torch.exp(at_least_fp32(self.A_log)), B, C, chunk_size=self.chunk_size,
                D=at_least_fp32(self.D), z=z, dt_bias=at_least_fp32(self.dt_bias), dt_softplus=True,
                dt_limit=self.dt_limit, backend=self.backend)
        return y.to(dtype).flatten(2)

    def project(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Grouped RMSNorm, dropout, then out_proj back to (B, L, d_model); ``x`` is unused."""
        return self.out_proj(self.dropout(self.norm(y)))

    def step_sizes(self, dt: torch.Tensor) -> torch.Tensor:
        """The step sizes the scan uses: softplus(dt + dt_bias), clamped to ``dt_limit``, in fp32 or better."""
        delta = F.softplus(at_least_fp32(dt) + at_least_fp32(self.dt_bias))
        lo, hi = self.dt_limit
        return delta if (lo, hi) == (0.0, math.inf) else delta.clamp(min=lo, max=hi)

    def selective_internals(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The input-dependent internals for the layer input ``x`` (B, L, d_model):

        - ``delta``: the step sizes after bias, softplus and clamp, (B, L, nheads);
        - ``state_energy``: the squared Frobenius norm of the SSM state after each step, summed over the
          heads, (B, L), from the plain recurrence h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t^T
          (differentiable; one step at a time, so slow on long sequences).

        Example:
            >>> layer = Mamba2(32, d_state=8, head_dim=16)
            >>> internals = layer.selective_internals(torch.randn(2, 5, 32))
            >>> internals["delta"].shape, internals["state_energy"].shape
            (torch.Size([2, 5, 4]), torch.Size([2, 5]))
        """
        self._check_input(x)
        u, dt, B, C, _ = self._scan_inputs(x)
        delta = self.step_sizes(dt)
        u, B = at_least_fp32(u), at_least_fp32(B).repeat_interleave(self.nheads // self.n_groups, dim=2)
        A = -torch.exp(at_least_fp32(self.A_log))
        h = u.new_zeros(u.shape[0], self.nheads, self.head_dim, self.d_state)
        energy = []
        for t in range(u.shape[1]):
            d = delta[:, t]  # (b, nheads)
            h = torch.exp(d * A)[..., None, None] * h + (d[..., None] * u[:, t])[..., None] * B[:, t, :, None, :]
            energy.append(h.pow(2).sum(dim=(1, 2, 3)))
        return {"delta": delta, "state_energy": torch.stack(energy, dim=1)}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, nheads={self.nheads}, head_dim={self.head_dim}, "
                f"n_groups={self.n_groups}, chunk_size={self.chunk_size}")


def _pair(owner: str, name: str, value, low: float) -> tuple[float, float]:
    """(lo, hi) as floats with low <= lo <= hi, else a ValueError naming ``owner.name``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name} must be a pair (lo, hi) of numbers, got {value!r}") from None
    if not low <= lo <= hi:
        raise ValueError(f"{owner}: {name} must be (lo, hi) with {low:g} <= lo <= hi, got {value!r}")
    return lo, hi


def _few(values: list[int]) -> str:
    """A short readable list: '1, 2, 4, 8' or '1, 2, 3, ..., 96'."""
    return ", ".join(map(str, values)) if len(values) <= 8 else ", ".join(map(str, values[:6])) + f", ..., {values[-1]}"
