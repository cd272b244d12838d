"""Causal long convolution: y[b, h, t] = sum_{s<=t} K[h, s] u[b, h, t - s] (+ D[h] u[b, h, t]).

u: (B, H, L); K: (H, L') with L' <= L (zero-padded) or more (truncated); D: (H,).
"""
from __future__ import annotations

import torch

from ._dispatch import Op, dispatch


def _check(u, K, D=None):
    if u.dim() != 3:
        raise ValueError(f"fft_conv: u must be (batch, H, L), got {tuple(u.shape)}")
    if K.dim() != 2 or K.shape[0] != u.shape[1]:
        raise ValueError(f"fft_conv: K must be (H={u.shape[1]}, L), got {tuple(K.shape)}")
    if D is not None and D.shape != (u.shape[1],):
        raise ValueError(f"fft_conv: D must be (H,)=({u.shape[1]},), got {tuple(D.shape)}")


def fft_conv_ref(u, K, D=None):
    """Direct sum over lags: the reference."""
    _check(u, K, D)
    L = u.shape[-1]
    K = K[:, :L]
    y = torch.zeros_like(u)
    for s in range(K.shape[-1]):
        y[..., s:] = y[..., s:] + K[None, :, s, None] * u[..., : L - s]
    return y if D is None else y + D[None, :, None] * u


def fft_conv_torch(u, K, D=None):
    """FFT convolution at length 2L (no wrap-around), computed in fp32 or better, output in u's dtype."""
    _check(u, K, D)
    L = u.shape[-1]
    K = K[:, :L]
    n = 2 * L
    work = torch.promote_types(u.dtype, torch.float32)
    # autocast leaves the FFTs alone on the CPU but not necessarily elsewhere; the product is fp32 by contract
    with torch.autocast(device_type=u.device.type, enabled=False):
        y = torch.fft.irfft(torch.fft.rfft(u.to(work), n=n) * torch.fft.rfft(K.to(work), n=n), n=n)[..., :L]
    y = y.to(u.dtype)
    return y if D is None else y + (D[None, :, None] * u).to(u.dtype)


FFT_CONV = Op("fft_conv", _check, fft_conv_ref, fft_conv_torch)


def fft_conv(u, K, D=None, backend="auto"):
    """Causal convolution of u (B, H, L) with K (H, L') plus D u, in u's dtype.

    ``backend``: "auto" or "torch" (``torch.fft``, on every device), or "reference" (the direct
    sum over lags). There is no Triton kernel: ``backend="triton"`` raises ``BackendError``, and
    ``ADVSSM_BACKEND=triton`` leaves this op on its PyTorch path.

        y = fft_conv(torch.randn(2, 4, 100), torch.randn(4, 100), torch.ones(4))   # (2, 4, 100)
    """
    return dispatch(FFT_CONV, backend, u, K, D)
