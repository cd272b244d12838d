"""Selective scan (S6 / Mamba), with the argument conventions of ``mamba_ssm``.

Shapes: u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (dim, N) (fixed) or
(batch, N, L) (input-dependent); D, delta_bias: (dim,).

    delta <- softplus(delta + delta_bias)        (softplus only if delta_softplus)
    x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t
    y_t = <C_t, x_t> + D u_t;   y <- y * silu(z)

Computed in fp32 (or fp64 if the inputs are fp64); the output has u's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import resolve_backend


def _check(u, delta, A, B, C, D, z, delta_bias):
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


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The obviously-right sequential loop over time (the reference the fast paths are tested against)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
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
    """Fast PyTorch path (no Python loop over time steps). Placeholder: the reference."""
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """Selective scan; returns y (batch, dim, L), and the last state (batch, dim, N) if asked."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    backend = resolve_backend(backend, u)
    if backend == "reference":
        fn = selective_scan_ref
    elif backend == "triton":
        from .triton import selective_scan_triton as fn
    else:
        fn = selective_scan_torch
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
