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
from ._selective_scan_cpu import selective_scan_cpu
from .diag_scan import diag_scan_torch


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


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """Fast PyTorch path: a time-major, block-wise sequential scan with a hand-written backward
    that recomputes each block's states (``_selective_scan_cpu``; memory held for backward: the
    inputs plus one state per block), bias, softplus, D and the gate included.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    with _autocast_off(u.device):
        u, delta, A, B, C, D, z, delta_bias = (None if t is None else t.to(work)
                                               for t in (u, delta, A, B, C, D, z, delta_bias))
        y, last = selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y


def selective_scan_twice_differentiable(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                        return_last_state=False):
    """The path ``double_backward()`` runs: every state materialised as (batch, dim, N, L) and the
    recurrence run by ``diag_scan``'s PyTorch path (a log-step scan whose backward is differentiable
    again), so autograd can take second derivatives. Memory: a few (batch, dim, N, L) tensors, where
    ``selective_scan_torch`` keeps one state per block; the Jacobian regulariser needs it only for the
    forward of its clean batch.

    Example:
        >>> u, delta = torch.randn(2, 4, 10, requires_grad=True), torch.rand(2, 4, 10)
        >>> A, B, C = -torch.rand(4, 3), torch.randn(2, 3, 10), torch.randn(2, 3, 10)
        >>> y = selective_scan_twice_differentiable(u, delta, A, B, C, delta_softplus=True)
        >>> (g,) = torch.autograd.grad(y.pow(2).sum(), u, create_graph=True)
        >>> g.pow(2).sum().backward()
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    with _autocast_off(u.device):
        u, delta, A, B, C, D, z, delta_bias = (None if t is None else t.to(work)
                                               for t in (u, delta, A, B, C, D, z, delta_bias))
        delta = _prepare_delta(delta, delta_bias, delta_softplus)

        def per_step(M):  # (batch, N, L) -> (batch, 1, N, L); fixed (dim, N) -> (1, dim, N, 1)
            return M[:, None] if M.dim() == 3 else M[None, :, :, None]

        decay = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (batch, dim, N, L)
        states = diag_scan_torch(decay, (delta * u)[:, :, None, :] * per_step(B))
        y = _finish((states * per_step(C)).sum(2), u, D, z).to(dtype_in)
    return (y, states[..., -1]) if return_last_state else y


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _shape_class(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """What the kernel specialises on: which inputs are given, input-dependent B / C, the flags, and
    its tiles (ops/triton/selective_scan.py: N rounded up to a power of two, min(pow2(dim), 32)
    channels per program)."""
    return (B.dim() == 3, C.dim() == 3, D is not None, z is not None, delta_bias is not None,
            bool(delta_softplus), bool(return_last_state), _pow2(A.shape[1]), min(_pow2(u.shape[1]), 32))


def _example(args, gen):
    """A small input of the class of ``args`` (same N, flags, tiles, dtypes and device) for the first-use
    check: up to 2 x 40 channels x 37 steps, so several channel blocks and time chunks of the kernel run."""
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
                    kernel="selective_scan:selective_scan_fn", shape_class=_shape_class, example=_example,
                    twice_differentiable=selective_scan_twice_differentiable,
                    fast_path="block-wise PyTorch scan (selective_scan_torch)")


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
