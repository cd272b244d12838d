"""Masked threat models: which input positions an adversary may change.

A threat model builds, for a batch ``x``, a bool mask broadcastable to ``x`` that any attack takes at call
time (``attack(x, y, mask=tm.mask(x))``) or as its default (``attack.threat_model = tm``); its ``name``
(e.g. ``"window(start=100,length=64)"``) goes into the attack's ``describe()``, the evaluation records and
the RobustBench-style record.

Positions are tokens, the way a sequence model reads the input:
- a sequence (B, L, C): position t is the token x[:, t, :] (all of its C channels);
- an image (B, C, H, W): position t is the pixel (t // W, t % W) in raster order, across all channels (the
  token order of a pixel-level model, which reads an image as a sequence of H * W pixels);
- a vector (B, D): position t is the coordinate x[:, t].
``patch`` is the one two-dimensional threat model: a square of pixels of an image.

    tm = window(start=100, length=64)
    x_adv = PGD(model, eps=0.1, alpha=0.025)(x, y, mask=tm.mask(x))
    tm.name                                                    # 'window(start=100,length=64)'
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ThreatModel:
    """A set of positions (see the module docstring), the same for every example of a batch.

    Build one with ``window``, ``prefix``, ``suffix``, ``random_positions``, ``patch`` or ``parse``.
    ``mask(x)`` is a bool tensor of shape (1, L, 1) for sequences, (1, 1, H, W) for images and (1, D) for
    vectors; it refuses a batch its positions do not fit, naming the sizes.
    """

    kind: str
    params: tuple[tuple[str, int], ...]

    @property
    def name(self) -> str:
        """The threat model as written in records, e.g. ``"prefix(k=16)"``."""
        return f"{self.kind}({','.join(f'{k}={v}' for k, v in self.params)})"

    def __str__(self) -> str:
        return self.name

    def positions(self, n_positions: int) -> Tensor:
        """The chosen positions among ``n_positions`` (sequence-like threat models), as a sorted long tensor."""
        p = dict(self.params)
        if self.kind == "patch":
            raise ValueError(f"{self.name} is a square patch of an image; it has no 1-d positions")
        if self.kind == "random":
            if p["k"] > n_positions:
                raise ValueError(f"{self.name}: {p['k']} positions asked of an input with {n_positions}")
            generator = torch.Generator().manual_seed(p["seed"])
            return torch.randperm(n_positions, generator=generator)[:p["k"]].sort().values
        start, stop = {"window": (p.get("start", 0), p.get("start", 0) + p.get("length", 0)),
                       "prefix": (0, p.get("k", 0)),
                       "suffix": (n_positions - p.get("k", 0), n_positions)}[self.kind]
        if start < 0 or stop > n_positions:
            raise ValueError(f"{self.name} does not fit an input of {n_positions} positions (it covers positions "
                             f"{start}..{stop - 1}); choose positions in 0..{n_positions - 1}")
        return torch.arange(start, stop)

    def mask(self, x: Tensor) -> Tensor:
        """The bool mask of this threat model for a batch ``x`` (B, L, C), (B, C, H, W) or (B, D)."""
        if self.kind == "patch":
            if x.dim() != 4:
                raise ValueError(f"{self.name} needs images (B, C, H, W); got inputs of shape {tuple(x.shape)} "
                                 "(for sequences use window, prefix, suffix or random)")
            p, (height, width) = dict(self.params), x.shape[2:]
            top, left, size = p["top"], p["left"], p["size"]
            if top + size > height or left + size > width:
                raise ValueError(f"{self.name} does not fit a {height} x {width} image (rows {top}..{top + size - 1}, "
                                 f"columns {left}..{left + size - 1})")
            out = torch.zeros(1, 1, height, width, dtype=torch.bool, device=x.device)
            out[..., top:top + size, left:left + size] = True
            return out
        if x.dim() == 4:
            shape, n = (1, 1, *x.shape[2:]), x.shape[2] * x.shape[3]
        elif x.dim() == 3:
            shape, n = (1, x.shape[1], 1), x.shape[1]
        elif x.dim() == 2:
            shape, n = (1, x.shape[1]), x.shape[1]
        else:
            raise ValueError(f"threat models take (B, L, C), (B, C, H, W) or (B, D) inputs; got {tuple(x.shape)}")
        flat = torch.zeros(n, dtype=torch.bool)
        flat[self.positions(n)] = True
        return flat.reshape(shape).to(x.device)

    def fraction(self, x: Tensor) -> float:
        """The share of ``x``'s coordinates the adversary may change."""
        return float(self.mask(x).expand(x.shape).float().mean())


def _nonnegative(name: str, value: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def window(start: int, length: int) -> ThreatModel:
    """Positions ``start .. start + length - 1``.

        window(start=100, length=64).name          # 'window(start=100,length=64)'
    """
    return ThreatModel("window", (("start", _nonnegative("start", start)),
                                  ("length", _nonnegative("length", length, 1))))


def prefix(k: int) -> ThreatModel:
    """The first ``k`` positions.

        prefix(16).mask(torch.rand(2, 64, 3)).sum()    # tensor(16)
    """
    return ThreatModel("prefix", (("k", _nonnegative("k", k, 1)),))


def suffix(k: int) -> ThreatModel:
    """The last ``k`` positions (the most recent steps of a causal model).

        suffix(8).name                             # 'suffix(k=8)'
    """
    return ThreatModel("suffix", (("k", _nonnegative("k", k, 1)),))


def random_positions(k: int, seed: int = 0) -> ThreatModel:
    """``k`` positions drawn uniformly without replacement from a generator seeded with ``seed``: the same
    positions for every example and every batch of an input length (so an evaluation is reproducible).

        random_positions(8, seed=0).name           # 'random(k=8,seed=0)'
    """
    return ThreatModel("random", (("k", _nonnegative("k", k, 1)), ("seed", _nonnegative("seed", seed))))


def patch(top: int, left: int, size: int) -> ThreatModel:
    """The ``size`` x ``size`` square of pixels with its top-left corner at row ``top``, column ``left``,
    across all channels (images only).

        patch(top=0, left=0, size=8).mask(torch.rand(2, 3, 32, 32)).shape   # (1, 1, 32, 32)
    """
    return ThreatModel("patch", (("top", _nonnegative("top", top)), ("left", _nonnegative("left", left)),
                                 ("size", _nonnegative("size", size, 1))))


#: The command-line syntax of each threat model (``parse``), in the order the help lists them.
SYNTAX = {"window": "window:START:LEN", "prefix": "prefix:K", "suffix": "suffix:K", "random": "random:K[:SEED]",
          "patch": "patch:TOP:LEFT:SIZE"}
_BUILDERS = {"window": (window, 2, 2), "prefix": (prefix, 1, 1), "suffix": (suffix, 1, 1),
             "random": (random_positions, 1, 2), "patch": (patch, 3, 3)}


def parse(text: str) -> ThreatModel:
    """A threat model from its command-line form (``SYNTAX``): ``window:100:64``, ``prefix:16``, ``suffix:8``,
    ``random:8`` or ``random:8:3`` (seed 3; default 0), ``patch:0:0:8``; ``full`` is None (no mask).

        parse("window:100:64").name                # 'window(start=100,length=64)'
    """
    forms = " | ".join(SYNTAX.values())
    kind, *args = str(text).strip().lower().split(":")
    if kind == "full" and not args:
        return None
    if kind not in _BUILDERS:
        raise ValueError(f"unknown threat model {text!r}; write one of {forms} (or full)")
    build, least, most = _BUILDERS[kind]
    if not least <= len(args) <= most or not all(re.fullmatch(r"\d+", a) for a in args):
        raise ValueError(f"threat model {text!r}: write {SYNTAX[kind]} with non-negative integers")
    return build(*(int(a) for a in args))


def sweep(n_positions: int, length: int, stride: int | None = None) -> list[ThreatModel]:
    """Windows of ``length`` positions at starts 0, stride, 2 stride, ... (default stride: ``length``), the last
    one ending at the last position: the threat models of a robustness-vs-position study.

        [tm.name for tm in sweep(10, 4)]
        # ['window(start=0,length=4)', 'window(start=4,length=4)', 'window(start=6,length=4)']
    """
    stride = length if stride is None else stride
    _nonnegative("length", length, 1)
    _nonnegative("stride", stride, 1)
    if length > n_positions:
        raise ValueError(f"a window of {length} positions does not fit an input of {n_positions}")
    starts = list(range(0, n_positions - length + 1, stride))
    if starts[-1] != n_positions - length:
        starts.append(n_positions - length)
    return [window(start, length) for start in starts]


def n_positions(x: Tensor) -> int:
    """The number of positions of a batch ``x`` (see the module docstring)."""
    return math.prod(x.shape[2:]) if x.dim() == 4 else x.shape[1]
