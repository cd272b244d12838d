"""Scan orders: one causal layer per direction over the tokens, merged back in token order.

A zoo layer reads its tokens once, first to last (``is_causal``). Vision SSMs read them in several
orders and add up what each order gives:

* ``"causal"``: the tokens in order, one layer (no wrapper: the plain zoo layer).
* ``"bidirectional"`` (Vim): the tokens in order and reversed, each direction its own layer.
* ``"cross2d"`` (VMamba's SS2D): the token grid (H, W) read row by row, column by column, and both
  of those reversed, each direction its own layer.

Each direction runs a full copy of the layer (its own parameters, its own mix, transform slot and
projection) on the tokens in its order; its output is put back into token order and the directions are
summed. (Vim and VMamba share the input and output projections between directions and sum the SSM
outputs before them; a wrapper that works for every layer of the zoo cannot split a layer that way:
Mega's projection holds its causal attention. Summing whole layers keeps every direction an exact
copy of the causal layer, and the reversal symmetry exact.) docs/concepts/vision.md draws the orders.

Tokens after the grid (the model's class token) stay last in every direction, so a class token sees
every patch whatever the order. The wrappers keep the layer contract of ``base.SequenceLayer``:

    y = wrapper.mix(x, grid)                 # (B, L, n_directions * layer.transform_dim): the directions'
                                             # SSM outputs in token order, side by side
    y = wrapper.output_transform(y)          # one transform per direction (AdS: one per direction)
    out = wrapper.project(y, x, grid)        # each direction's projection, back in token order, summed

``grid`` is (H, W) of the token grid (H * W <= L); the model passes it. Bidirectional needs none
(``None``: all L tokens are reversed).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .base import SequenceLayer

SCANS = ("causal", "bidirectional", "cross2d")


class PerDirection(nn.Module):
    """One output transform per scan direction, each on its direction's slice of the features.

    Example:
        >>> t = PerDirection([nn.Identity(), nn.Identity()], width=3)
        >>> t(torch.ones(1, 2, 6)).shape
        torch.Size([1, 2, 6])
    """

    def __init__(self, parts: list[nn.Module], width: int):
        super().__init__()
        self.parts, self.width = nn.ModuleList(parts), width

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(chunk) for t, chunk in zip(self.parts, y.split(self.width, dim=-1))], dim=-1)


class ScanLayer(SequenceLayer):
    """Base of the multi-direction wrappers: ``n_directions`` copies of a layer, each reading the tokens
    in its own order (``orders``), their outputs summed in token order. Not causal, not LTI as a whole
    (the causal-convolution bound of an LTI layer does not hold for the merged map).

    Args:
        make_layer: a factory that builds one fresh direction layer (a ``SequenceLayer``) per call.
    """

    is_causal = False
    is_lti = False
    n_directions = 1
    scan = "causal"

    def __init__(self, make_layer: Callable[[], SequenceLayer]):
        layers = [make_layer() for _ in range(self.n_directions)]
        if not isinstance(layers[0], SequenceLayer):
            raise TypeError(f"{type(self).__name__}: make_layer must build a SequenceLayer, got "
                            f"{type(layers[0]).__name__}")
        super().__init__(layers[0].d_model)
        self.directions = nn.ModuleList(layers)
        self.inner = type(layers[0]).__name__
        self.inner_dim = layers[0].transform_dim
        self.has_output_transform = layers[0].has_output_transform
        self.is_selective = getattr(layers[0], "is_selective", False)

    @property
    def transform_dim(self) -> int:
        return self.n_directions * self.inner_dim

    def make_output_transform(self, build: Callable[[int], nn.Module]) -> nn.Module:
        return PerDirection([build(self.inner_dim) for _ in range(self.n_directions)], self.inner_dim)

    def orders(self, length: int, grid: tuple[int, int] | None, device) -> list[torch.Tensor | None]:
        """One index tensor per direction: position i of that direction's sequence reads token order[i]
        (None: the tokens as they are)."""
        raise NotImplementedError  # pragma: no cover - subclasses

    def _pairs(self, x: torch.Tensor, grid):
        """(layer, order, inverse) per direction; inverse puts a direction's outputs back in token order."""
        for layer, order in zip(self.directions, self.orders(x.shape[1], grid, x.device)):
            yield layer, order, None if order is None else torch.argsort(order)

    def mix(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Each direction's SSM output, in token order, side by side: (B, L, n_directions * inner_dim)."""
        return torch.cat([_take(layer.mix(_take(x, order)), inverse)
                          for layer, order, inverse in self._pairs(x, grid)], dim=-1)

    def project(self, y: torch.Tensor, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Each direction's projection of its slice of ``y`` (read in its order), in token order, summed."""
        out = None
        for (layer, order, inverse), part in zip(self._pairs(x, grid), y.split(self.inner_dim, dim=-1)):
            o = _take(layer.project(_take(part, order), _take(x, order)), inverse)
            out = o if out is None else out + o
        return out

    def selective_internals(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """The direction layers' internals in token order: ``delta`` side by side (channels of every
        direction), ``state_energy`` summed over the directions."""
        if not self.is_selective:
            raise TypeError(f"{type(self).__name__} of {self.inner} has no selective internals")
        merged: dict[str, torch.Tensor] = {}
        for layer, order, inverse in self._pairs(x, grid):
            for key, value in layer.selective_internals(_take(x, order)).items():
                value = _take(value, inverse)
                if key == "state_energy":
                    merged[key] = value if key not in merged else merged[key] + value
                else:
                    merged[key] = value if key not in merged else torch.cat([merged[key], value], dim=-1)
        return merged

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        self._check_input(x)
        return self.project(self.output_transform(self.mix(x, grid)), x, grid)

    def extra_repr(self) -> str:
        return f"scan={self.scan!r}, layer={self.inner}, directions={self.n_directions}"


def _take(t: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``t`` with its token dimension (1) read in ``index`` order."""
    return t if index is None else t.index_select(1, index)


def _grid_tokens(owner: str, length: int, grid) -> int:
    """H * W of ``grid``, checked against the number of tokens."""
    if grid is None:
        return length
    h, w = grid
    if h * w > length:
        raise ValueError(f"{owner}: a {h}x{w} token grid needs at least {h * w} tokens, got {length}")
    return h * w


def _with_extras(order: torch.Tensor, length: int) -> torch.Tensor:
    """``order`` over the grid tokens, then the tokens after the grid (the class token) in place."""
    n = order.numel()
    return order if n == length else torch.cat([order, torch.arange(n, length, device=order.device)])


class Bidirectional(ScanLayer):
    """Vim's scan: one layer reads the tokens first to last, a second one last to first; outputs summed.

    Example:
        >>> from advssm.ssm_layers.layers import S4D
        >>> layer = Bidirectional(lambda: S4D(8, d_state=4))
        >>> layer(torch.rand(2, 16, 8)).shape
        torch.Size([2, 16, 8])
    """

    n_directions = 2
    scan = "bidirectional"

    def orders(self, length, grid, device):
        n = _grid_tokens(type(self).__name__, length, grid)
        return [None, _with_extras(torch.arange(n - 1, -1, -1, device=device), length)]


class Cross2D(ScanLayer):
    """VMamba's SS2D scan over an (H, W) token grid: row-major, column-major, and both reversed; one
    layer per direction, outputs put back in grid order and summed.

    Example:
        >>> from advssm.ssm_layers.layers import S4D
        >>> layer = Cross2D(lambda: S4D(8, d_state=4))
        >>> layer(torch.rand(2, 12, 8), grid=(3, 4)).shape
        torch.Size([2, 12, 8])
    """

    n_directions = 4
    scan = "cross2d"

    def orders(self, length, grid, device):
        if grid is None:
            raise ValueError("Cross2D needs the token grid: call it with grid=(H, W) (the model passes it for "
                             "image inputs; sequences have no grid, use scan 'bidirectional' or 'causal')")
        n = _grid_tokens(type(self).__name__, length, grid)
        h, w = grid
        rows = torch.arange(n, device=device)
        cols = rows.view(h, w).t().reshape(-1)
        return [None, _with_extras(cols, length), _with_extras(rows.flip(0), length),
                _with_extras(cols.flip(0), length)]


SCAN_LAYERS: dict[str, type[ScanLayer]] = {"bidirectional": Bidirectional, "cross2d": Cross2D}


def wrap_scan(scan: str, make_layer: Callable[[], SequenceLayer]) -> SequenceLayer:
    """The layer for a scan order: ``make_layer()`` itself for "causal", else a wrapper of
    ``n_directions`` fresh layers.

    Example:
        >>> from advssm.ssm_layers.layers import S4D
        >>> type(wrap_scan("bidirectional", lambda: S4D(8, d_state=4))).__name__
        'Bidirectional'
    """
    if scan == "causal":
        return make_layer()
    if scan not in SCAN_LAYERS:
        raise ValueError(f"unknown scan {scan!r}; choose one of {', '.join(SCANS)}")
    return SCAN_LAYERS[scan](make_layer)
