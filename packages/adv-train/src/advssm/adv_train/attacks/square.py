"""Square Attack, Linf, L2 and L1 (Andriushchenko et al., "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020): score-based random search that only queries
the model's outputs (every forward runs under ``torch.no_grad()``, no gradients at all).

Each query draws, per example, a random window of side h (its area a fraction p of the spatial
size) and proposes a change there; the candidate is kept if it lowers the margin
z_y - max_{j != y} z_j. An example is done once its margin is negative. The fraction p follows
the paper's schedule: p_init, halved at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
of a 10000-query budget (rescaled to ``n_queries``).

- Linf. Start: vertical stripes, x + eps * s with one random sign s per (channel, column). A
  proposal sets the perturbation in the window to eps times a new random sign per channel; where
  that would change nothing in the window (the signs it already has), the opposite signs are used.
- L2. Start: a 5 x 5 grid of windows (5 segments for sequences), each holding the paper's pattern
  of concentric rectangles with weights 1/(k+1)^2, positive on one half and negative on the other,
  times a random sign per channel; rescaled to norm eps. A proposal moves the perturbation's mass
  from a second random window into the first one, where it gets a new pattern plus the old
  (normalised) content, and rescales the whole perturbation back to norm eps.
- L1 (the L1 ball intersected with the [0, 1] box; the AutoAttack code's L1 Square, Croce & Hein 2021). The
  same as L2 with L1 masses: the window pattern's rectangles are weighted 1/(k+1)^4 (unit L1 norm per half),
  the start (the 5 x 5 grid of patterns) is projected onto the ball and the box instead of rescaled, and a
  proposal gives the first window, per channel, the pattern plus its old content (each of unit L1 norm),
  scaled to C times (the unused budget / C + that channel's mass in both windows), C the channels, as the
  AutoAttack code does; the projection onto the ball and the box (``project_l1_box``) then takes the excess
  back, so the candidate always lies in the threat model. The factor C matters (measured on a blob MLP of
  3 x 8 x 8 inputs, eps 14, 1000 queries: 42 % broken with it, 2 % without).

Layouts: (B, C, H, W) images get square windows over (H, W); (B, L, C) sequences get windows
of length p * L over L, with one sign per channel; (B, D) vectors windows of length p * D.

Masks: each window is drawn where it overlaps the mask's bounding box (per example: inside the box when
it fits, covering it when it is larger), and the perturbation is zeroed outside the mask before the
query (L2: before it is rescaled to norm eps; L1: before it is projected), so no query is spent on coordinates
that may not move.
Unlike the AutoAttack code, which draws one window and one sign per channel for the whole batch
at each query, every example gets its own (as in the paper's own code): a little stronger.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import TINY, Attack, apply_mask, check_positive_int, margin_loss, project_l1_box

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


def rectangles(shape: tuple[int, ...], p: int = 2) -> Tensor:
    """Concentric boxes around the centre of ``shape``, unit Lp norm (float64): box k weighted 1/(k+1)^2 for the
    L2 Square Attack (p = 2), 1/(k+1)^4 for the L1 one (p = 1)."""
    out = torch.zeros(shape, dtype=torch.float64)
    if out.numel() == 0:
        return out
    centre, power = [n // 2 for n in shape], 2 if p == 2 else 4
    for k in range(max(centre) + 1):
        out[tuple(slice(max(c - k, 0), min(c + k + 1, n)) for c, n in zip(centre, shape))] += 1.0 / (k + 1) ** power
    return out / out.norm(p=p)


def window_pattern(side: int, dims: int, p: int = 2) -> Tensor:
    """The L2 (p = 2) or L1 (p = 1) Square Attack's window pattern: ``rectangles`` on the first half of the
    first axis, minus them on the second half; unit Lp norm, shape (side,) * dims.

        window_pattern(5, 1, p=1).abs().sum()   # 1 (float64)
    """
    rest = (side,) * (dims - 1)
    pattern = torch.cat([rectangles((side // 2, *rest), p), -rectangles((side - side // 2, *rest), p)])
    return pattern / pattern.norm(p=p)


class _Windows:
    """Random windows and signs for a batch, one ``torch.rand`` call per query, index tensors reused."""

    def __init__(self, generator: torch.Generator, device: torch.device):
        self.generator, self.device = generator, device
        self._bases: dict[tuple, tuple[Tensor, ...]] = {}

    def draw(self, n: int, channels: int, space: list[int], side: int, windows: int,
             bounds: list[tuple[Tensor, Tensor]] | None = None) -> tuple[list[tuple], Tensor]:
        """``windows`` advanced-indexing tuples into (n, channels, *space), each giving (n, channels, side, ...),
        and a random sign per (example, channel), shaped (n, channels, 1, ...). ``bounds``: per spatial axis,
        the (n,) first and past-the-last index of the region each window must overlap (None: all of it)."""
        d = len(space)
        u = torch.rand((n, windows * d + channels), generator=self.generator, device=self.device)
        key = (n, channels, tuple(space), side)
        if key not in self._bases:
            offsets = []
            for axis in range(d):
                shape = [1, 1] + [1] * d
                shape[2 + axis] = side
                offsets.append(torch.arange(side, device=self.device).reshape(shape))
            positions = torch.tensor([size - side + 1 for size in space], device=self.device, dtype=u.dtype)
            self._bases[key] = (positions, torch.arange(n, device=self.device).reshape(n, 1, *[1] * d),
                                torch.arange(channels, device=self.device).reshape(1, channels, *[1] * d), *offsets)
        positions, batch_index, channel_index, *offsets = self._bases[key]
        index = []
        if bounds is not None:  # starts in [s_min, s_max]: the window inside the region, or covering it
            low = torch.stack([(b_lo.clamp(max=b_hi - side)).clamp(min=0) for b_lo, b_hi in bounds], 1)
            high = torch.stack([torch.minimum(torch.maximum(b_lo, b_hi - side), torch.full_like(b_lo, size - side))
                                for (b_lo, b_hi), size in zip(bounds, space)], 1)
            low, positions = low.minimum(high), (high - low.minimum(high) + 1).to(u.dtype)
        for w in range(windows):
            starts = (u[:, w * d:(w + 1) * d] * positions).long()  # uniform in 0 .. size - side (u < 1)
            if bounds is not None:
                starts = starts + low
            index.append((batch_index, channel_index,
                          *(starts[:, axis].reshape(n, 1, *[1] * d) + offsets[axis] for axis in range(d))))
        signs = 2.0 * (u[:, windows * d:] < 0.5) - 1
        return index, signs.reshape(n, channels, *[1] * d)


def _bounding_box(mask: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per spatial axis of a channels-first bool ``mask`` (n, C, *space): the (n,) first index and one past the
    last where any channel is masked (the whole axis for an example with an empty mask)."""
    spatial = mask.any(1)
    bounds = []
    for axis in range(1, spatial.dim()):
        line = spatial.any(dim=[a for a in range(1, spatial.dim()) if a != axis]) if spatial.dim() > 2 else spatial
        size = line.shape[1]
        empty = ~line.any(1)
        first = line.to(torch.uint8).argmax(1)
        last = size - line.flip(1).to(torch.uint8).argmax(1)
        bounds.append((torch.where(empty, 0, first), torch.where(empty, size, last)))
    return bounds


def _l2(t: Tensor) -> Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).reshape(-1, *[1] * (t.dim() - 1))


class Square(Attack):
    """Square Attack, untargeted, margin loss, no gradient access.

    Example:
        square = Square(model, eps=0.3, n_queries=1000, seed=0)
        x_adv = square(x, y)
        x_adv = Square(model, eps=12.0, norm="L1", seed=0)(x, y)     # the L1 ball within the [0, 1] box

    Args:
        model: classifier mapping [0, 1] inputs to logits; only its outputs are queried.
        eps: radius of the ball.
        n_queries: queries per example (5000 in AutoAttack), besides the initial one.
        p_init: initial fraction of the spatial size covered by a window (0.8 in AutoAttack).
        n_restarts: runs from fresh starts on the examples not yet fooled.
        seed: seeds all the random choices.
        norm: "Linf", "L2" or "L1" (the L1 ball intersected with the [0, 1] box; see the module docstring).
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, n_queries: int = 5000, p_init: float = 0.8,
                 n_restarts: int = 1, seed: int | None = 0, norm: str = "Linf"):
        super().__init__(model, eps, norm=norm, seed=seed)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init}")
        self.n_queries = check_positive_int(n_queries, "n_queries")
        self.n_restarts = check_positive_int(n_restarts, "n_restarts")
        self.p_init = float(p_init)

    def __repr__(self) -> str:
        return f"Square(norm={self.norm!r}, eps={self.eps:g}, n_queries={self.n_queries}, p_init={self.p_init:g})"

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
            x_adv[idx], margin[idx] = self.run(x[idx], y[idx], generator,
                                               None if self.mask is None else self.mask[idx])
        return x_adv

    def _margin(self, x: Tensor, y: Tensor) -> Tensor:
        return -margin_loss(self.logits(x), y)

    def run(self, x: Tensor, y: Tensor, generator: torch.Generator,
            mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One random search, changing only the coordinates of ``mask`` (None: all); returns (best point, its
        margin z_y - max_other)."""
        dim, xc = x.dim(), to_channels_first(x)
        batch, _, *space = xc.shape
        mc = None if mask is None else to_channels_first(mask)
        bounds = None if mc is None else _bounding_box(mc)
        if self.norm == "Linf":
            best = self._start_linf(xc, generator)
        else:
            best = self._start_l2(xc, generator) if self.norm == "L2" else self._start_l1(xc, generator, mc)
        best = xc + apply_mask(best - xc, mc) if mc is not None else best
        margin = self._margin(from_channels_first(best, dim), y)
        patterns: dict[tuple[int, bool], Tensor] = {}
        windows = _Windows(generator, x.device)
        for query in range(self.n_queries):
            todo = (margin > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            everyone = todo.numel() == batch  # skips the gathers while nothing is fooled yet
            x_now, current = (xc, best) if everyone else (xc[todo], best[todo])
            m_now = None if mc is None else mc if everyone else mc[todo]
            b_now = None if bounds is None else bounds if everyone else [(lo[todo], hi[todo]) for lo, hi in bounds]
            p = p_selection(self.p_init, query, self.n_queries)
            if self.norm == "Linf":
                candidate = self._propose_linf(x_now, current, p, windows, m_now, b_now)
            else:
                candidate = self._propose_mass(x_now, current, p, windows, generator, patterns, m_now, b_now)
            new_margin = self._margin(from_channels_first(candidate, dim), y if everyone else y[todo])
            better = new_margin < (margin if everyone else margin[todo])
            rows = better.nonzero().squeeze(1)
            kept = rows if everyone else todo[rows]
            best[kept] = candidate[rows]
            margin[kept] = new_margin[rows]
        return from_channels_first(best, dim), margin

    # -- Linf -----------------------------------------------------------------------------
    def _start_linf(self, xc: Tensor, generator: torch.Generator) -> Tensor:
        batch, channels, *space = xc.shape
        # one sign per (channel, column): constant along every axis but the last
        draw = torch.randint(0, 2, (batch, channels, *[1] * (len(space) - 1), space[-1]), generator=generator,
                             device=xc.device)
        return (xc + self.eps * (2 * draw - 1).to(xc.dtype)).clamp(0, 1)

    def _propose_linf(self, x_now: Tensor, current: Tensor, p: float, windows: _Windows, mask: Tensor | None = None,
                      bounds: list | None = None) -> Tensor:
        n, channels, *space = x_now.shape
        side = min(max(round((p * math.prod(space)) ** (1 / len(space))), 1), min(space))
        (window,), signs = windows.draw(n, channels, space, side, 1, bounds)
        signs = signs.to(x_now.dtype)
        x_win, current_win = x_now[window], current[window]
        proposal = (x_win + self.eps * signs).clamp(0, 1)
        if mask is not None:
            proposal = torch.where(mask[window], proposal, x_win)
        unchanged = (proposal == current_win).flatten(1).all(1)
        # the signs the window already has: take the opposite ones (the farthest corner of the window)
        signs = signs * (1 - 2 * unchanged.to(signs.dtype)).reshape(-1, *[1] * (signs.dim() - 1))
        candidate = current.clone()
        candidate[window] = (x_win + self.eps * signs).clamp(0, 1)
        return candidate if mask is None else x_now + apply_mask(candidate - x_now, mask)

    # -- L2 and L1 ------------------------------------------------------------------------
    def _start_l2(self, xc: Tensor, generator: torch.Generator) -> Tensor:
        delta = self._pattern_grid(xc, generator, p=2)
        return (xc + self.eps * delta / (_l2(delta) + TINY)).clamp(0, 1)

    def _start_l1(self, xc: Tensor, generator: torch.Generator, mask: Tensor | None) -> Tensor:
        # projected, not rescaled (as in the AutoAttack code): the ball takes the largest entries of the grid
        delta = apply_mask(self._pattern_grid(xc, generator, p=1), mask)
        return (xc + project_l1_box(delta, xc, self.eps)).clamp(0, 1)

    @staticmethod
    def _pattern_grid(xc: Tensor, generator: torch.Generator, p: int) -> Tensor:
        """The start's perturbation: a 5 x 5 grid of windows (5 segments for sequences), each holding the Lp
        pattern times a random sign per (example, channel)."""
        batch, channels, *space = xc.shape
        side = max(min(space) // 5, 1)
        pattern = window_pattern(side, len(space), p).to(xc)
        delta = torch.zeros_like(xc)
        counts = [size // side for size in space]
        starts = [(size - side * count) // 2 for size, count in zip(space, counts)]
        for cell in torch.cartesian_prod(*[torch.arange(c) for c in counts]).reshape(-1, len(space)).tolist():
            region = tuple(slice(s + c * side, s + (c + 1) * side) for s, c in zip(starts, cell))
            signs = 2.0 * torch.randint(0, 2, (batch, channels, *[1] * len(space)), generator=generator,
                                        device=xc.device).to(xc.dtype) - 1
            delta[(slice(None), slice(None), *region)] += pattern * signs
        return delta

    def _propose_mass(self, x_now: Tensor, current: Tensor, p: float, windows: _Windows, generator: torch.Generator,
                      patterns: dict[tuple[int, bool], Tensor], mask: Tensor | None = None,
                      bounds: list | None = None) -> Tensor:
        """The L2 and L1 proposal: the mass of a second window moves into the first, which gets a new pattern plus
        its old (normalised) content; then back into the threat model (L2: rescaled to norm eps; L1: projected
        onto the ball and the box)."""
        l1 = self.norm == "L1"
        n, channels, *space = x_now.shape
        side = max(round((p * math.prod(space)) ** (1 / len(space))), 3)
        side = min(side + 1 - side % 2, min(space))  # odd, as in the paper's code, and inside the input
        (first, second), signs = windows.draw(n, channels, space, side, 2, bounds)
        delta = current - x_now
        window_dims = tuple(range(2, delta.dim()))

        def window_norm(t: Tensor) -> Tensor:  # per (example, channel)
            return t.abs().sum(window_dims, keepdim=True) if l1 else t.pow(2).sum(window_dims, keepdim=True).sqrt()

        old = delta[first]
        both = torch.zeros_like(delta)
        both[first] = 1.0
        both[second] = 1.0
        # the pattern's orientation: transposed with probability 1/2 (images), one draw per query as in the paper
        flip = len(space) == 2 and bool(torch.rand((), generator=generator, device=x_now.device) > 0.5)
        if (side, flip) not in patterns:
            pattern = window_pattern(side, len(space), p=1 if l1 else 2)
            patterns[side, flip] = (pattern.T if flip else pattern).to(x_now).contiguous()
        new = patterns[side, flip] * signs.to(x_now.dtype) + old / (window_norm(old) + TINY)
        if l1:  # the AutoAttack code's mass: C (unused budget / C + the channel's mass in both windows), C the
            # channels; the projection below takes back what exceeds eps (without the factor C: much weaker)
            image_mass = delta.abs().flatten(1).sum(1).reshape(-1, *[1] * (delta.dim() - 1))
            size = ((self.eps - image_mass).clamp(min=0) / channels + window_norm(delta * both)) * channels
        else:
            size = ((self.eps ** 2 - _l2(delta) ** 2).clamp(min=0) / channels + _l2(delta * both) ** 2).sqrt()
        new = new / (window_norm(new) + TINY) * size
        delta[second] = 0.0
        delta[first] = new
        delta = apply_mask(delta, mask)
        if l1:
            return (x_now + project_l1_box(delta, x_now, self.eps)).clamp(0, 1)
        return (x_now + self.eps * delta / (_l2(delta) + TINY)).clamp(0, 1)
