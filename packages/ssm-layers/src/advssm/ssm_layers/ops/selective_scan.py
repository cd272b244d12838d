"""Selective scan (S6 / Mamba), with the argument conventions of ``mamba_ssm``.

Shapes: u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (dim, N) (fixed) or
(batch, N, L) (input-dependent); D, delta_bias: (dim,).

    delta <- softplus(delta + delta_bias)        (softplus only if delta_softplus)
    x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t
    y_t = <C_t, x_t> + D u_t;   y <- y * silu(z)

Computed in fp32 (or fp64 if u is fp64), also inside an autocast region; the output has
u's dtype, the last state (``return_last_state``) the compute dtype, as in mamba_ssm.
Not supported (a ValueError says so): complex A and grouped (batch, G, N, L) B / C.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import Op, dispatch
from .diag_scan import linear_scan


def _check(u, delta, A, B, C, D=None, z=None, delta_bias=None, *flags):
    """Raise ValueError for inputs the op does not take (``flags``: delta_softplus, return_last_state)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported; pass a real (dim, N) tensor")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.shape not in ((dim, N), (batch, N, L)):
            raise ValueError(
                f"selective_scan: {name} must be (dim, N)=({dim}, {N}) or (batch, N, L)=({batch}, {N}, {L}), "
                f"got {tuple(M.shape)}"
            )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim,)=({dim},), got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _prepare_delta(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(y, u, D, z):
    if D is not None:
        y = y + D[None, :, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def _autocast_off(device: torch.device):
    """A context in which autocast does not lower einsum / matmul precision: the scan is fp32 by contract."""
    return torch.autocast(device_type=device.type, enabled=False)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The obviously-right sequential loop over time (the reference the fast paths are tested against)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    with _autocast_off(u.device):
        return _selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    dtype_in = u.dtype
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    D = D.to(work) if D is not None else None
    z = z.to(work) if z is not None else None
    delta_bias = delta_bias.to(work) if delta_bias is not None else None
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    batch, dim, L = u.shape
    variable_B, variable_C = B.dim() == 3, C.dim() == 3
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if variable_B:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        x = deltaA[:, :, t] * x + deltaB_u[:, :, t]
        if variable_C:
            ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, t]))
        else:
            ys.append(torch.einsum("bdn,dn->bd", x, C))
    y = _finish(torch.stack(ys, dim=2), u, D, z).to(dtype_in)
    return (y, x) if return_last_state else y


# Work tensors are (batch, channels, N, T): a block of T time steps of a slice of the channels.
# Sized to stay in cache (1 MiB of fp32; on one CPU core about 2x faster at the benchmark size
# than the 16 MiB blocks used before), with at least _MIN_BLOCK steps per block so that the
# loops below run over blocks of time steps, never over single steps; when that is too large,
# the channels are processed in slices (the recurrence is independent per channel).
_BLOCK_ELEMENTS = 1 << 18
_MIN_BLOCK = 16


def _blocking(batch, dim, N, L):
    """(time steps per block, channels per slice) for a (batch, dim, N, L) scan."""
    T = min(L, max(_MIN_BLOCK, _BLOCK_ELEMENTS // max(1, batch * dim * N)))
    channels = max(1, min(dim, _BLOCK_ELEMENTS // max(1, batch * N * T)))
    return T, channels


def _expand_bc(M, t0, t1):
    """B or C for time steps [t0, t1): (batch, N, T) -> (batch, 1, N, T), fixed (dim, N) -> (1, dim, N, 1)."""
    return M[:, None, :, t0:t1] if M.dim() == 3 else M[None, :, :, None]


def _block_terms(u, delta, A, B, t0, t1):
    """Decay exp(delta A) and input delta B u of one time block, both (batch, dim, N, T)."""
    d = delta[:, :, None, t0:t1]
    return torch.exp(d * A[None, :, :, None]), d * u[:, :, None, t0:t1] * _expand_bc(B, t0, t1)


def _contract_n(x, M, t0, t1):
    """sum_n x[b, d, n, t] M[.., n, t]: y_t = <C_t, x_t> for either layout of C."""
    return torch.einsum("bdnt,bnt->bdt", x, M[:, :, t0:t1]) if M.dim() == 3 else torch.einsum("bdnt,dn->bdt", x, M)


class _SelectiveScanCore(torch.autograd.Function):
    """y_t = <C_t, x_t>, x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t, and the last state.

    Forward keeps only the states at time-block boundaries; backward recomputes each block's
    states from its boundary and runs the adjoint g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}
    backwards, block by block. Within a block both run as log-step scans. Autocast is off
    inside (it would run the einsums in half precision and mix dtypes in backward).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, T):
        batch, dim, L = u.shape
        with _autocast_off(u.device):
            x = u.new_zeros(batch, dim, A.shape[1])
            starts, ys = [], []
            for t0 in range(0, L, T):
                t1 = min(L, t0 + T)
                starts.append(x)
                decay, inp = _block_terms(u, delta, A, B, t0, t1)
                xs = linear_scan(decay, inp, x)
                ys.append(_contract_n(xs, C, t0, t1))
                x = xs[..., -1].contiguous()
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
        ctx.block = T
        return torch.cat(ys, dim=-1), x

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, starts = ctx.saved_tensors
        with _autocast_off(u.device):
            grads = _core_backward(u, delta, A, B, C, starts, ctx.block, dy, dlast)
        return (*grads, None)


def _core_backward(u, delta, A, B, C, starts, T, dy, dlast):
    """Gradients of (u, delta, A, B, C) given those of y and of the last state (see the class)."""
    L = u.shape[-1]
    dy = torch.zeros_like(u) if dy is None else dy.to(u.dtype)
    du, ddelta = torch.zeros_like(u), torch.zeros_like(delta)
    dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
    # d loss / d x at the end of the block being processed, from everything later
    carry = None if dlast is None else dlast.to(u.dtype)
    for i in reversed(range(len(starts))):
        t0, t1 = i * T, min(L, (i + 1) * T)
        decay, inp = _block_terms(u, delta, A, B, t0, t1)
        xs = linear_scan(decay, inp, starts[i])
        dy_blk = dy[:, :, None, t0:t1]
        decay_next = torch.cat([decay[..., 1:], torch.ones_like(decay[..., :1])], dim=-1)
        g = linear_scan(decay_next, dy_blk * _expand_bc(C, t0, t1), carry, reverse=True)
        carry = decay[..., 0] * g[..., 0]
        # d loss / d(delta A) = g_t * exp(delta_t A) x_{t-1} = g_t (x_t - delta_t B_t u_t)
        g_dA = g * (xs - inp)
        gB = _contract_n(g, B, t0, t1)  # sum_n g B: the input term's gradient per (b, d, t)
        d_blk, u_blk = delta[:, :, t0:t1], u[:, :, t0:t1]
        du[:, :, t0:t1] = gB * d_blk
        ddelta[:, :, t0:t1] = gB * u_blk + torch.einsum("bdnt,dn->bdt", g_dA, A)
        dA += torch.einsum("bdnt,bdt->dn", g_dA, d_blk)
        if B.dim() == 3:
            dB[:, :, t0:t1] = torch.einsum("bdnt,bdt->bnt", g, d_blk * u_blk)
        else:
            dB += torch.einsum("bdnt,bdt->dn", g, d_blk * u_blk)
        if C.dim() == 3:
            dC[:, :, t0:t1] = torch.einsum("bdnt,bdt->bnt", xs, dy[:, :, t0:t1])
        else:
            dC += torch.einsum("bdnt,bdt->dn", xs, dy[:, :, t0:t1])
    return du, ddelta, dA, dB, dC


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """Fast PyTorch path: block-wise log-step scans with a hand-written, recomputing backward.

    No Python loop over time steps: the loops run over blocks of at least ``_MIN_BLOCK`` steps
    and over channel slices, each a whole-tensor scan sized to stay in cache (see ``_blocking``);
    memory held for backward is the inputs plus one state per block. The elementwise prologue
    (bias, softplus) and epilogue (D, gate) are differentiated by autograd.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    with _autocast_off(u.device):
        u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
        delta = _prepare_delta(delta, None if delta_bias is None else delta_bias.to(work), delta_softplus)
        batch, dim, L = u.shape
        T, channels = _blocking(batch, dim, A.shape[1], L)
        # split (one autograd node each, whose backward concatenates) rather than index: the
        # gradients of the slices are then assembled once, not summed from full-size zeros
        pieces = zip(u.split(channels, 1), delta.split(channels, 1), A.split(channels, 0),
                     B.split(channels, 0) if B.dim() == 2 else [B] * -(-dim // channels),
                     C.split(channels, 0) if C.dim() == 2 else [C] * -(-dim // channels))
        ys, lasts = zip(*(_SelectiveScanCore.apply(*piece, T) for piece in pieces))
        y, last = torch.cat(ys, dim=1), torch.cat(lasts, dim=1)
        y = _finish(y, u, None if D is None else D.to(work), None if z is None else z.to(work)).to(dtype_in)
    return (y, last) if return_last_state else y


def _shape_class(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """What the kernel specialises on: which inputs are given, input-dependent B / C, the flags, and N
    rounded up to a power of two (the state tile)."""
    return (B.dim() == 3, C.dim() == 3, D is not None, z is not None, delta_bias is not None,
            bool(delta_softplus), bool(return_last_state), 1 << max(0, A.shape[1] - 1).bit_length())


def _example(args, gen):
    """A small input of the class of ``args`` (same N, flags, dtypes and device) for the first-use check:
    up to 2 x 40 channels x 37 steps, so several channel blocks and time chunks of the kernel run."""
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state = args
    batch, dim, L = u.shape
    b, d, n, l = min(batch, 2), min(dim, 40), A.shape[1], min(L, 37)

    def draw(like, *shape, scale=1.0, shift=0.0, uniform=False):
        if like is None:
            return None
        x = torch.rand(*shape, generator=gen) if uniform else torch.randn(*shape, generator=gen)
        return (x * scale + shift).to(device=like.device, dtype=like.dtype)

    return (draw(u, b, d, l), draw(delta, b, d, l, scale=0.6, shift=0.05, uniform=True),
            draw(A, d, n, scale=-1.0, shift=-0.3, uniform=True),  # decaying, as S6's A = -exp(A_log)
            draw(B, *((b, n, l) if B.dim() == 3 else (d, n))), draw(C, *((b, n, l) if C.dim() == 3 else (d, n))),
            draw(D, d), draw(z, b, d, l), draw(delta_bias, d, scale=0.3), delta_softplus, return_last_state)


SELECTIVE_SCAN = Op("selective_scan", _check, selective_scan_ref, selective_scan_torch,
                    kernel="selective_scan:selective_scan_fn", shape_class=_shape_class, example=_example)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """Selective scan with ``mamba_ssm.selective_scan_fn``'s arguments (see the module docstring).

    Returns y (batch, dim, L) in u's dtype, and with ``return_last_state`` also the final state
    (batch, dim, N) in the compute dtype (fp32, or fp64 for fp64 inputs).
    ``backend``: "auto", "torch", "triton" or "reference" (see ``advssm.ssm_layers.ops``).

        y = selective_scan(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True)
    """
    return dispatch(SELECTIVE_SCAN, backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                    return_last_state)
