"""Causal long convolution: y[b, h, t] = sum_{s<=t} K[h, s] u[b, h, t - s] (+ D[h] u[b, h, t]).

u: (B, H, L); K: (H, L') with L' <= L (zero-padded) or more (truncated); D: (H,).
"""
from __future__ import annotations

import torch


def _check(u, K, D):
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


def fft_conv(u, K, D=None):
    """FFT convolution at length 2L (no wrap-around), computed in fp32 or better."""
    _check(u, K, D)
    L = u.shape[-1]
    K = K[:, :L]
    n = 2 * L
    work = torch.promote_types(u.dtype, torch.float32)
    y = torch.fft.irfft(torch.fft.rfft(u.to(work), n=n) * torch.fft.rfft(K.to(work), n=n), n=n)[..., :L]
    y = y.to(u.dtype)
    return y if D is None else y + D[None, :, None] * u
