"""SSD (state space duality, Mamba-2's scan) with the semantics of ``mamba_ssm``'s
``mamba_chunk_scan_combined``.

Shapes: x, z: (batch, L, nheads, headdim); dt: (batch, L, nheads); A, dt_bias: (nheads,);
B, C: (batch, L, ngroups, dstate) with nheads % ngroups == 0 (head h uses group
h // (nheads // ngroups)); D: (nheads, headdim) or (nheads,).

    dt <- clamp(softplus(dt + dt_bias), *dt_limit)   (softplus only if dt_softplus; clamp only
                                                      if dt_limit is not (0, inf))
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        (per head: headdim x dstate)
    y_t = h_t C_t + D x_t;   y <- y * silu(z)

Computed in fp32 (fp64 for fp64 inputs), also inside an autocast region; y has x's dtype.
``chunk_size`` is the length of the chunks of the chunked algorithm (the result does not
depend on it beyond rounding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._dispatch import Op, dispatch
from ._ssd_cpu import ssd_chunked

NO_LIMIT = (0.0, float("inf"))


def _check(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=NO_LIMIT):
    """Raise ValueError for inputs the op does not take."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"ssd: x must be (batch, L, nheads, headdim), got shape "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    batch, L, nheads, headdim = x.shape
    if L == 0:
        raise ValueError("ssd: the sequence is empty (x has L = 0); pass at least one time step")
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("dt_bias", dt_bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"ssd: {name} must be a real floating tensor, got {t.dtype}")
    if dt.shape != (batch, L, nheads):
        raise ValueError(f"ssd: dt must be (batch, L, nheads)=({batch}, {L}, {nheads}), got {tuple(dt.shape)}")
    if A.shape != (nheads,):
        raise ValueError(f"ssd: A must be (nheads,)=({nheads},) (one scalar per head), got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (batch, L):
        raise ValueError(f"ssd: B must be (batch, L, ngroups, dstate) with batch={batch}, L={L}, "
                         f"got {tuple(B.shape)}")
    ngroups = B.shape[2]
    if ngroups == 0 or nheads % ngroups:
        raise ValueError(f"ssd: nheads={nheads} must be a multiple of ngroups={ngroups} (B's third dimension)")
    if C.shape != B.shape:
        raise ValueError(f"ssd: C must have B's shape (batch, L, ngroups, dstate)={tuple(B.shape)}, "
                         f"got {tuple(C.shape)}")
    if D is not None and D.shape not in ((nheads, headdim), (nheads,)):
        raise ValueError(f"ssd: D must be (nheads, headdim)=({nheads}, {headdim}) or (nheads,)=({nheads},), "
                         f"got {tuple(D.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"ssd: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if dt_bias is not None and dt_bias.shape != (nheads,):
        raise ValueError(f"ssd: dt_bias must be (nheads,)=({nheads},), got {tuple(dt_bias.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be a positive int, got {chunk_size!r}")
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"ssd: dt_limit must be a pair (min, max) of numbers, got {dt_limit!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"ssd: dt_limit must be (min, max) with min <= max, got {dt_limit!r}")


def _work_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare_dt(dt, dt_bias, dt_softplus, dt_limit):
    """dt after bias, softplus (torch's, linear above 20, as mamba_ssm's) and the clamp."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(float(v) for v in dt_limit) != NO_LIMIT:
        dt = dt.clamp(min=float(dt_limit[0]), max=float(dt_limit[1]))
    return dt


def _finish(y, x, D, z):
    """y + D x, gated by silu(z)."""
    if D is not None:
        # D per head expanded to (nheads, headdim) rather than broadcast from (nheads, 1): its gradient is
        # then one contiguous sum over batch and L (and a small one over headdim), not a strided
        # reduction over three dims (a third faster at L 4096); addcmul: one pass instead of two
        y = torch.addcmul(y, D[:, None].expand(x.shape[-2:]) if D.dim() == 1 else D, x)
    if z is not None:
        y = y * F.silu(z)
    return y


def _cast(work, *tensors):
    return tuple(None if t is None else t.to(work) for t in tensors)


def ssd_reference(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                  dt_limit=NO_LIMIT):
    """The obviously-right sequential loop over time (float64 for float64 inputs, else fp32): the
    reference the fast paths are tested against. ``chunk_size`` is accepted and not used.

        y = ssd_reference(x.double(), dt.double(), A.double(), B.double(), C.double(), D=D.double())
    """
    _check(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit)
    dtype_in = x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C, D, z, dt_bias = _cast(_work_dtype(x), x, dt, A, B, C, D, z, dt_bias)
        dt = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit)
        batch, L, nheads, headdim = x.shape
        per_group = nheads // B.shape[2]
        Bh, Ch = B.repeat_interleave(per_group, dim=2), C.repeat_interleave(per_group, dim=2)  # (b, L, h, n)
        h = x.new_zeros(batch, nheads, headdim, B.shape[3])
        ys = []
        # per-step views by unbind (whose backward stacks the steps' gradients once; indexing x[:, t]
        # would make a full-size gradient per step, quadratic in L)
        for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), Bh.unbind(1), Ch.unbind(1)):
            h = torch.exp(dt_t * A)[:, :, None, None] * h + (dt_t[:, :, None] * x_t)[..., None] * B_t[:, :, None, :]
            ys.append((h * C_t[:, :, None, :]).sum(-1))
        y = _finish(torch.stack(ys, dim=1), x, D, z)
    return y.to(dtype_in)


def ssd_torch(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
              dt_limit=NO_LIMIT):
    """The PyTorch path: the chunked algorithm of ``_ssd_cpu`` (any device; plain differentiable
    torch ops, so double backward works), in fp32 or fp64.

        y = ssd_torch(x, dt, A, B, C, chunk_size=64, D=D, dt_bias=dt_bias, dt_softplus=True)
    """
    _check(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit)
    dtype_in = x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C, D, z, dt_bias = _cast(_work_dtype(x), x, dt, A, B, C, D, z, dt_bias)
        dt = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit)
        y = _finish(ssd_chunked(x, dt, A, B, C, chunk_size), x, D, z)
    return y.to(dtype_in)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _tile(headdim: int, dstate: int) -> tuple[int, int]:
    """The kernel's state tile (ops/triton/ssd.py ``blocks``): dstate rounded up to a power of two,
    and as many headdim rows (a power of two) as keep the tile within 4096 elements."""
    block_n = _pow2(dstate)
    return min(_pow2(headdim), max(1, 4096 // block_n)), block_n


def _shape_class(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit):
    """What the kernel specialises on: which inputs are given (D per head or per channel), the dt
    options, its tile and whether a head's rows need more than one program."""
    block_p, block_n = _tile(x.shape[3], B.shape[3])
    return (None if D is None else D.dim(), z is not None, dt_bias is not None, bool(dt_softplus),
            tuple(float(v) for v in dt_limit) != NO_LIMIT, block_p, block_n, x.shape[3] > block_p)


def _example(args, gen):
    """A small input of the class of ``args`` (same tile, flags, dtypes, device, chunk size and dt
    limit) for the first-use check: up to 2 x 70 steps (three of the kernel's 32-step chunks, the
    last partial), 2 groups of 2 heads, two row blocks where the caller's head has several."""
    x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit = args
    batch, L, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    block_p, _ = _tile(headdim, dstate)
    b, l, g = min(batch, 2), min(L, 70), min(ngroups, 2)
    h = g * min(nheads // ngroups, 2)
    p = block_p + 3 if headdim > block_p else headdim

    def draw(like, *shape, scale=1.0, shift=0.0, uniform=False):
        if like is None:
            return None
        v = torch.rand(*shape, generator=gen) if uniform else torch.randn(*shape, generator=gen)
        return (v * scale + shift).to(device=like.device, dtype=like.dtype)

    dt_example = (draw(dt, b, l, h, scale=0.5) if dt_softplus  # without softplus, dt > 0 itself
                  else draw(dt, b, l, h, scale=0.6, shift=0.05, uniform=True))
    return (draw(x, b, l, h, p), dt_example, draw(A, h, scale=-1.0, shift=-0.2, uniform=True),
            draw(B, b, l, g, dstate), draw(C, b, l, g, dstate), chunk_size,
            None if D is None else draw(D, *((h, p) if D.dim() == 2 else (h,))), draw(z, b, l, h, p),
            draw(dt_bias, h, scale=0.3), dt_softplus, dt_limit)


SSD = Op("ssd", _check, ssd_reference, ssd_torch, kernel="ssd:ssd_fn", shape_class=_shape_class, example=_example)


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=NO_LIMIT, backend="auto"):
    """Mamba-2's SSD scan with ``mamba_chunk_scan_combined``'s arguments (see the module docstring).

    Returns y (batch, L, nheads, headdim) in x's dtype.
    ``backend``: "auto", "torch", "triton" or "reference" (see ``advssm.ssm_layers.ops``).

        y = ssd(x, dt, A, B, C, chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)
    """
    return dispatch(SSD, backend, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit)
