"""Square Attack, Linf (Andriushchenko et al., "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020): score-based random search that only queries
the model's outputs (every forward runs under ``torch.no_grad()``, no gradients at all).

Start: vertical stripes, x + eps * s with one random sign s per (channel, column). Each query:
per example, a random window of side h (its area a fraction p of the spatial size) gets a new
random sign per channel, i.e. the perturbation there becomes +-eps; the candidate is kept if it
lowers the margin z_y - max_{j != y} z_j. An example is done once its margin is negative.
The fraction p follows the paper's schedule: p_init, halved at queries 10, 50, 200, 500, 1000,
2000, 4000, 6000, 8000 of a 10000-query budget (rescaled to ``n_queries``).

Layouts: (B, C, H, W) images get square windows over (H, W); (B, L, C) sequences get windows
of length p * L over L, with one sign per channel; (B, D) vectors windows of length p * D.
A window is resampled at most a few times when its new signs equal the current ones.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Attack, check_positive_int, margin_loss

# Query indices (of a 10000-query budget) after which p halves once more.
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, query: int, n_queries: int) -> float:
    """The window-area fraction at ``query`` (0-based) of ``n_queries``, per the Square Attack paper."""
    rescaled = int(query / n_queries * 10000)
    return p_init / 2 ** sum(rescaled > q for q in P_SCHEDULE)


def to_channels_first(x: Tensor) -> Tensor:
    """(B, C, H, W) stays; (B, L, C) -> (B, C, L); (B, D) -> (B, 1, D)."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.transpose(1, 2)
    if x.dim() == 2:
        return x[:, None]
    raise ValueError(f"Square supports inputs of shape (B, D), (B, L, C) or (B, C, H, W); got {tuple(x.shape)}")


def from_channels_first(x: Tensor, dim: int) -> Tensor:
    """Inverse of ``to_channels_first`` for an input of ``dim`` dimensions."""
    return x if dim == 4 else x.transpose(1, 2) if dim == 3 else x[:, 0]


class Square(Attack):
    """Square Attack (Linf), untargeted, margin loss, no gradient access.

    Args:
        model: classifier mapping [0, 1] inputs to logits; only its outputs are queried.
        eps: Linf radius.
        n_queries: queries per example (5000 in AutoAttack), besides the initial one.
        p_init: initial fraction of the spatial size covered by a window (0.8 in AutoAttack).
        n_restarts: runs from fresh stripes on the examples not yet fooled.
        seed: seeds all the random choices.
        norm: only "Linf" is implemented.
    """

    RESAMPLES = 10

    def __init__(self, model: nn.Module, eps: float = 8 / 255, n_queries: int = 5000, p_init: float = 0.8,
                 n_restarts: int = 1, seed: int | None = 0, norm: str = "Linf"):
        super().__init__(model, eps, norm=norm, seed=seed)
        if norm != "Linf":
            raise ValueError("Square implements the Linf attack only; use norm='Linf' (or drop Square from "
                             "an L2 evaluation)")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init}")
        self.n_queries = check_positive_int(n_queries, "n_queries")
        self.n_restarts = check_positive_int(n_restarts, "n_restarts")
        self.p_init = float(p_init)

    def __repr__(self) -> str:
        return f"Square(eps={self.eps:g}, n_queries={self.n_queries}, p_init={self.p_init:g})"

    def budget(self) -> dict:
        return {"queries": self.n_queries, "p_init": self.p_init, "restarts": self.n_restarts}

    @torch.no_grad()
    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        to_channels_first(x)  # rejects unsupported shapes even when nothing is left to attack
        logits = self.logits(x)
        margin = -margin_loss(logits, y)
        x_adv = x.clone()
        for _ in range(self.n_restarts):
            idx = (margin > 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x_adv[idx], margin[idx] = self.run(x[idx], y[idx], generator)
        return x_adv

    def _margin(self, x: Tensor, y: Tensor) -> Tensor:
        return -margin_loss(self.logits(x), y)

    def run(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """One random search; returns (best point, its margin z_y - max_other)."""
        dim, xc = x.dim(), to_channels_first(x)
        batch, channels, *space = xc.shape

        def signs(n: int, *shape: int) -> Tensor:
            return 2.0 * torch.randint(0, 2, (n, *shape), generator=generator, device=x.device).to(x.dtype) - 1

        stripes = signs(batch, channels, *[1] * (len(space) - 1), space[-1])
        best = (xc + self.eps * stripes).clamp(0, 1)
        margin = self._margin(from_channels_first(best, dim), y)
        for query in range(self.n_queries):
            todo = (margin > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            p = p_selection(self.p_init, query, self.n_queries)
            side = min(max(round((p * math.prod(space)) ** (1 / len(space))), 1), min(space))
            x_now, current = xc[todo], best[todo]
            window = self._window(len(todo), space, side, generator, x.device)
            delta = current - x_now
            for _ in range(self.RESAMPLES):
                new_signs = signs(len(todo), channels, *[1] * len(space))
                candidate_delta = torch.where(window, self.eps * new_signs, delta)
                candidate = (x_now + candidate_delta).clamp(0, 1)
                if ((candidate - current).abs() * window).flatten(1).amax(1).gt(0).all():
                    break
            new_margin = self._margin(from_channels_first(candidate, dim), y[todo])
            better = new_margin < margin[todo]
            best[todo[better]] = candidate[better]
            margin[todo[better]] = new_margin[better]
        return from_channels_first(best, dim), margin

    @staticmethod
    def _window(n: int, space: list[int], side: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """A boolean mask (n, 1, *space): per example one hypercube of ``side`` at a random position."""
        mask = torch.ones(n, 1, *space, dtype=torch.bool, device=device)
        for axis, size in enumerate(space):
            start = torch.randint(0, size - side + 1, (n,), generator=generator, device=device)
            pos = torch.arange(size, device=device)
            inside = (pos >= start[:, None]) & (pos < start[:, None] + side)  # (n, size)
            view = [n] + [1] * len(space)
            view[1 + axis] = size
            mask &= inside.reshape(n, 1, *view[1:])
        return mask
