"""S4: the structured state space layer with the DPLR parameterisation and HiPPO-LegS init
(Gu, Goel, Re 2022, "Efficiently Modeling Long Sequences with Structured State Spaces").

HiPPO-LegS is normal plus low rank: A = S - p p^T with S = -I/2 + (skew-symmetric) and
p_n = sqrt(n + 1/2). Diagonalising S by a unitary V gives A = V (Lambda - P P^*) V^*, whose
eigenvalues come in conjugate pairs; the layer stores the N/2 modes with positive imaginary
part (``d_state = N`` is the real state size, as in S4D) and rebuilds the full complex
system [x, conj(x)] when computing the kernel, so the kernel is real.

The kernel (the S4 paper's Algorithm 1): with the bilinear discretisation
A_bar = (I - dt/2 A)^-1 (I + dt/2 A), B_bar = (I - dt/2 A)^-1 dt B, the truncated generating
function at the L-th roots of unity w is sum_{l<L} C A_bar^l B_bar w^l = C~ (I - A_bar w)^-1 B_bar
with C~ = C (I - A_bar^L). Multiplying through by (I - dt/2 A) gives

    dt C~ ((1 - w) I - (1 + w) dt/2 A)^-1 B,

which, unlike the paper's 2/(1+w) form, has no pole at w = -1. With A = Lambda - P P^*, the
Woodbury identity reduces the inverse to Cauchy sums over the diagonal
R_n = 1 / ((1 - w) - (1 + w) dt/2 Lambda_n); an inverse real FFT gives K.

The layer keeps C itself (not C~) as its parameter, so ``conv_kernel(L)`` is the true
kernel at every length; C~ needs A_bar^L, taken by repeated squaring of the dense
(H, N, N) matrix (built in closed form by Sherman-Morrison), O(H N^3 log L), which is small
for the paper's N <= 64.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import at_least_fp32, positive_int
from .s4d import LTILayer, log_timescales


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The HiPPO-LegS (A, B) of size N and its low-rank term p, with A + p p^T normal (float64)."""
    n = torch.arange(N, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, q.clone(), torch.sqrt(n + 0.5)


def legs_normal_eigen(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues Lambda (N,) and unitary eigenvectors V (N, N) of the normal part S = A + p p^T
    of HiPPO-LegS (complex128), ordered by decreasing imaginary part, so for even N the first N/2
    have positive imaginary part and the rest are their conjugates."""
    A, _, p = hippo_legs(N)
    S = A + p[:, None] * p[None, :]
    skew = (S - S.T) / 2  # S = -I/2 + skew; -i * skew is Hermitian, so eigh is exact and stable
    mu, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    mu, V = mu.flip(0), V.flip(1)
    return torch.complex(torch.diagonal(S).mean().expand(N), mu), V


def legs_dplr(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS in DPLR form, half of the conjugate pairs: (Lambda, P, B, V), each over the N/2
    modes with positive imaginary part, such that with Lambda_f = [Lambda, conj Lambda] etc. and
    V_f = [V, conj V], A = V_f (diag(Lambda_f) - P_f P_f^*) V_f^* and B = V_f B_f."""
    if N % 2:
        raise ValueError(f"legs_dplr: N must be even (conjugate pairs), got {N}")
    _, B, p = hippo_legs(N)
    Lam, V = legs_normal_eigen(N)
    V = V[:, : N // 2]
    to_modes = V.conj().T
    return Lam[: N // 2], to_modes @ p.to(V.dtype), to_modes @ B.to(V.dtype), V


def _stored(z: torch.Tensor) -> torch.Tensor:
    """A complex tensor as the float32 (..., 2) real view that parameters keep (so .double() converts it)."""
    return torch.view_as_real(z.to(torch.complex64)).contiguous()


def with_conjugates(z: torch.Tensor) -> torch.Tensor:
    """[z, conj z] along the last dimension: the full state from its N/2 stored modes."""
    return torch.cat([z, z.conj()], dim=-1)


class S4(LTILayer):
    """S4 with the DPLR (NPLR) parameterisation, HiPPO-LegS init, bilinear discretisation and
    the Cauchy + Woodbury kernel (see the module docstring).

    Lambda and P are shared by all channels; B, C and the step dt are per channel.

    Args:
        d_model: channels H.
        d_state: real state size N (N/2 stored conjugate modes; must be even).
        dropout: dropout rate after the activation.
        dt_min, dt_max: range of the log-uniform init of dt per channel.
        lr: learning rate of Lambda, P, B and log dt (None: the global one; 0: frozen).
        backend: the backend of the FFT convolution; the kernel itself is plain PyTorch, so S4 has
            no Triton path and refuses ``"triton"`` rather than ignoring it.
    """

    no_triton = "S4's kernel (Cauchy + Woodbury) and its FFT convolution run on PyTorch only"

    def __init__(self, d_model: int, d_state: int = 64, dropout: float = 0.0, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, lr: float | None = None, backend: str = "auto"):
        super().__init__(d_model, d_state, dropout, lr, backend)
        H = d_model
        Lam, P, B, _ = legs_dplr(d_state)
        self.D = nn.Parameter(torch.randn(H))
        self.C = nn.Parameter(_stored(torch.randn(H, d_state // 2, dtype=torch.cfloat)))
        self.register_ssm("log_dt", log_timescales(H, dt_min, dt_max, "S4"))
        self.register_ssm("log_lambda_real", (-Lam.real).log().float())
        self.register_ssm("lambda_imag", Lam.imag.float())
        self.register_ssm("P", _stored(P))
        self.register_ssm("B", _stored(B.expand(H, -1)))

    def system(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The full continuous system (Lambda (N,), P (N,), B (H, N), C (H, N)), complex, with
        A = diag(Lambda) - P P^* for every channel."""
        Lam = torch.complex(-at_least_fp32(self.log_lambda_real).exp(), at_least_fp32(self.lambda_imag))
        parts = (Lam, *(torch.view_as_complex(at_least_fp32(p)) for p in (self.P, self.B, self.C)))
        return tuple(with_conjugates(z) for z in parts)

    def conv_kernel(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K (H, L), D (H,)): the layer's exact causal kernel and skip."""
        L = positive_int("S4.conv_kernel", "L", L)
        Lam, P, B, C = self.system()
        dt = at_least_fp32(self.log_dt).exp()[:, None]  # (H, 1)
        # A_bar = (I - dt/2 A)^-1 (I + dt/2 A) = 2 (I - dt/2 A)^-1 - I, and I - dt/2 A is diagonal plus
        # rank one, so Sherman-Morrison inverts it in closed form (a batched dense solve is far slower)
        d = 1 / (1 - dt / 2 * Lam)  # (H, N): inverse of the diagonal part
        scale = dt / 2 / (1 + dt / 2 * (P.conj() * d * P).sum(-1, keepdim=True))  # (H, 1)
        inv = torch.diag_embed(d) - scale[..., None] * (d * P)[:, :, None] * (P.conj() * d)[:, None, :]
        A_bar = 2 * inv - torch.eye(Lam.shape[0], dtype=Lam.dtype, device=Lam.device)
        C_tilde = C - torch.einsum("hn,hnm->hm", C, torch.linalg.matrix_power(A_bar, L))
        # the roots of unity w_k = exp(-2 pi i k / L) for the rfft half, k = 0..L//2
        angle = -2 * math.pi / L * torch.arange(L // 2 + 1, dtype=dt.dtype, device=dt.device)
        w = torch.polar(torch.ones_like(angle), angle)
        a, c = 1 - w, (1 + w) * dt / 2  # (K,), (H, K)
        R = 1 / (a[:, None] - c[..., None] * Lam)  # (H, K, N): the Cauchy terms
        # the four Woodbury terms [C~; P^*] R [B, P] in one contraction: k[..., i, j]
        left = torch.stack([C_tilde, P.conj().expand_as(C_tilde)], dim=1)  # (H, 2, N)
        right = torch.stack([B, P.expand_as(B)], dim=-1)  # (H, N, 2)
        k = torch.einsum("hin,hkn,hnj->hkij", left, R, right)
        spectrum = dt * (k[..., 0, 0] - c * k[..., 0, 1] * k[..., 1, 0] / (1 + c * k[..., 1, 1]))
        return torch.fft.irfft(spectrum, n=L), self.D
