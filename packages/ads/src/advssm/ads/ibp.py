"""Interval bound propagation (IBP) through the LTI backbone: sound bounds on the logits over an Linf box.

Every input x' with ``|x' - x|_inf <= eps`` and ``x'`` in [0, 1] is pushed through the model as a box
(centre c, radius r) per coordinate, each component bounding its output for every point of its input box:

* affine maps (the embedding, the output projection, the head): c' = W c + b, r' = |W| r; exact per coordinate;
* an LTI layer's mix ``y = K * u + D u`` (S4, S4D, DSS, S5 through ``conv_kernel``): c' = K * c + D c,
  r' = |K| * r + |D| r, also exact per coordinate (the convolution is linear);
* GELU (decreasing, then increasing: one minimum at x* = -0.7518), the GLU gate, AdS's relu / sigmoid / tanh:
  their exact range over each coordinate's interval;
* products (the GLU's ``a * sigmoid(b)``, AdS's ``scale * y``): the interval product, which forgets that both
  factors come from the same input (sound, loose);
* LayerNorm: the centred value ``x_i - mean(x)`` is linear (its interval is exact), the variance is bounded
  term by term (each ``(x_i - mean)^2`` over its own interval), so ``1 / sqrt(var + eps)`` lies in an interval
  and the normalised value in an interval product (RMSNorm likewise, without the centring). Sound, and the
  loosest step of the chain: when the box is wide the variance's lower bound collapses to 0 and the bound grows
  like ``1 / sqrt(eps_LN)``;
* the residual sum and mean pooling: centre and radius add / average (the residual forgets the dependency);
* the head's margins ``z_y - z_j = (w_y - w_j) . pooled + (b_y - b_j)`` are bounded in one affine step (tighter
  than subtracting the two logits' bounds).

An example is verified at eps when every margin's lower bound is positive: no input in the box changes the
class. The bounds are computed in float64 with the model's weights (exact arithmetic up to float64 rounding);
the model's own float32 forward differs from that by rounding only (about 1e-6 relative).

Selective layers (S6, Mamba-2), Mega, attention and the multi-direction scans are refused with an error
naming the layer: their maps are not linear in the input, and no bound is attempted.

Example:
    >>> from advssm.ssm_layers import ModelConfig, build_model
    >>> model = build_model(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=1, n_classes=3))
    >>> lower, upper = logit_bounds(model, torch.rand(2, 16, 1), eps=0.01)
    >>> bool((lower <= upper).all())
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from advssm.ssm_layers.layers.s4d import LTILayer
from torch import Tensor, nn

from .scaling import AdaptiveScaling


class IBPUnsupportedError(ValueError):
    """The model holds a component interval bound propagation has no bound for; the message names it."""


@dataclass(frozen=True)
class Box:
    """Per-coordinate intervals ``[center - radius, center + radius]`` (radius >= 0), float64."""

    center: Tensor
    radius: Tensor

    @classmethod
    def from_bounds(cls, lower: Tensor, upper: Tensor) -> Box:
        return cls((upper + lower) / 2, ((upper - lower) / 2).clamp_min(0.0))

    @property
    def lower(self) -> Tensor:
        return self.center - self.radius

    @property
    def upper(self) -> Tensor:
        return self.center + self.radius

    def __add__(self, other: Box) -> Box:
        return Box(self.center + other.center, self.radius + other.radius)


# ------------------------------------------------------------------------------------------------------
# Components, each a sound map from a box to a box.
# ------------------------------------------------------------------------------------------------------
def input_box(x: Tensor, eps: float) -> Box:
    """The threat model's box: the Linf ball of radius ``eps`` around ``x`` intersected with [0, 1]."""
    x = x.detach().double()
    return Box.from_bounds((x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0))


def affine(box: Box, weight: Tensor, bias: Tensor | None) -> Box:
    """``W x + b`` over the last dimension (nn.Linear's layout)."""
    weight = weight.detach().double()
    return Box(F.linear(box.center, weight, None if bias is None else bias.detach().double()),
               F.linear(box.radius, weight.abs()))


def monotone(box: Box, fn) -> Box:
    """An increasing elementwise function: its range is [fn(lower), fn(upper)]."""
    return Box.from_bounds(fn(box.lower), fn(box.upper))


def _gelu_minimum() -> tuple[float, float]:
    """(x*, GELU(x*)): GELU's one minimum, where Phi(x) + x phi(x) = 0 (Newton in float64)."""
    x = -0.75
    for _ in range(50):
        phi = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        grad = 0.5 * (1 + math.erf(x / math.sqrt(2))) + x * phi
        x -= grad / (phi * (2 - x * x))  # d/dx [Phi + x phi] = 2 phi - x^2 phi
    return x, x * 0.5 * (1 + math.erf(x / math.sqrt(2)))


GELU_ARGMIN, GELU_MIN = _gelu_minimum()


def gelu(box: Box) -> Box:
    """Exact GELU (``approximate='none'``) range: the larger end value on top, and the minimum inside the
    interval (GELU decreases before x* and increases after it) or the smaller end value at the bottom."""
    low, high = F.gelu(box.lower), F.gelu(box.upper)
    contains = (box.lower <= GELU_ARGMIN) & (box.upper >= GELU_ARGMIN)
    lower = torch.where(contains, torch.full_like(low, GELU_MIN), torch.minimum(low, high))
    return Box.from_bounds(lower, torch.maximum(low, high))


def product(a: Box, b: Box) -> Box:
    """The interval product: the smallest and largest of the four products of the ends."""
    ends = torch.stack([a.lower * b.lower, a.lower * b.upper, a.upper * b.lower, a.upper * b.upper])
    return Box.from_bounds(ends.amin(0), ends.amax(0))


def glu(box: Box) -> Box:
    """``a * sigmoid(b)`` with (a, b) the two halves of the last dimension (``F.glu``)."""
    half = box.center.shape[-1] // 2
    a = Box(box.center[..., :half], box.radius[..., :half])
    b = Box(box.center[..., half:], box.radius[..., half:])
    return product(a, monotone(b, torch.sigmoid))


def layer_norm(box: Box, norm: nn.LayerNorm) -> Box:
    """A sound box for LayerNorm over the last dimension (see the module docstring for how, and how loose)."""
    if len(norm.normalized_shape) != 1:
        raise IBPUnsupportedError(f"IBP bounds LayerNorm over the last dimension only, got {norm.normalized_shape}")
    d = box.center.shape[-1]
    # x_i - mean(x) = (1 - 1/d) x_i - (1/d) sum_{j != i} x_j: a linear map, so its interval is exact
    centred = Box(box.center - box.center.mean(-1, keepdim=True),
                  box.radius * (1 - 2 / d) + box.radius.sum(-1, keepdim=True) / d)
    lo = centred.lower
    sq_low, sq_high = _square_bounds(centred)
    var_low, var_high = sq_low.mean(-1, keepdim=True), sq_high.mean(-1, keepdim=True)
    inv_std = Box.from_bounds(torch.rsqrt(var_high + norm.eps), torch.rsqrt(var_low + norm.eps))
    out = product(centred, Box(inv_std.center.expand_as(lo), inv_std.radius.expand_as(lo)))
    if norm.weight is not None:
        weight = norm.weight.detach().double()
        out = Box(out.center * weight, out.radius * weight.abs())
    if norm.bias is not None:
        out = Box(out.center + norm.bias.detach().double(), out.radius)
    return out


def _square_bounds(box: Box) -> tuple[Tensor, Tensor]:
    """Elementwise bounds of x^2 over the box (0 at the bottom when the interval holds 0)."""
    lo, hi = box.lower, box.upper
    low = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo * lo, hi * hi))
    return low, torch.maximum(lo * lo, hi * hi)


def rms_norm(box: Box, norm: nn.Module) -> Box:
    """A sound box for RMSNorm ``x / sqrt(mean(x^2) + eps) * weight``: the mean square bounded term by term, then
    an interval product, as for LayerNorm."""
    sq_low, sq_high = _square_bounds(box)
    eps = norm.eps if norm.eps is not None else torch.finfo(box.center.dtype).eps
    low, high = sq_low.mean(-1, keepdim=True) + eps, sq_high.mean(-1, keepdim=True) + eps
    inv = Box.from_bounds(torch.rsqrt(high).expand_as(box.center), torch.rsqrt(low).expand_as(box.center))
    out = product(box, inv)
    if norm.weight is not None:
        weight = norm.weight.detach().double()
        out = Box(out.center * weight, out.radius * weight.abs())
    return out


def normalization(box: Box, norm: nn.Module, owner: str) -> Box:
    """The model's norms: LayerNorm, RMSNorm or none (identity)."""
    if isinstance(norm, nn.Identity):
        return box
    if isinstance(norm, nn.LayerNorm):
        return layer_norm(box, norm)
    if isinstance(norm, nn.RMSNorm):
        return rms_norm(box, norm)
    raise IBPUnsupportedError(f"IBP has no bound for the norm {type(norm).__name__} of {owner}; "
                              "it bounds LayerNorm, RMSNorm and none")


def lti_mix(box: Box, layer: nn.Module) -> Box:
    """``y = K * u + D u`` of an LTI layer on a (B, L, H) box, from ``layer.conv_kernel(L)`` (causal)."""
    L = box.center.shape[1]
    K, D = layer.conv_kernel(L)
    K = K.detach().double()[..., :L]
    c, r = box.center.transpose(1, 2), box.radius.transpose(1, 2)  # (B, H, L)
    center, radius = _causal_conv(c, K), _causal_conv(r, K.abs()).clamp_min(0.0)
    if D is not None:
        D = D.detach().double()
        if D.dim() == 1:
            center, radius = center + D[:, None] * c, radius + D.abs()[:, None] * r
        else:
            center = center + torch.einsum("oi,bil->bol", D, c)
            radius = radius + torch.einsum("oi,bil->bol", D.abs(), r)
    return Box(center.transpose(1, 2), radius.transpose(1, 2))


def _causal_conv(u: Tensor, K: Tensor) -> Tensor:
    """Causal convolution of u (B, H_in, L) with a per-channel K (H, L) or a MIMO K (H_out, H_in, L), by FFT at
    length 2L (no wrap-around), in float64."""
    L = u.shape[-1]
    spectrum_u, spectrum_k = torch.fft.rfft(u, n=2 * L), torch.fft.rfft(K, n=2 * L)
    if K.dim() == 2:
        spectrum = spectrum_u * spectrum_k
    else:
        spectrum = torch.einsum("bil,oil->bol", spectrum_u, spectrum_k)
    return torch.fft.irfft(spectrum, n=2 * L)[..., :L]


def output_transform(box: Box, module: nn.Module, owner: str) -> Box:
    """The transform slot: identity, or AdS ``act(W_s y + b_s) * y + act(W_b y + b_b)``."""
    if isinstance(module, nn.Identity):
        return box
    if isinstance(module, AdaptiveScaling):
        scale = monotone(affine(box, module.scale_proj.weight, module.scale_proj.bias), module.act)
        out = product(scale, box)
        if module.shift_proj is not None:
            out = out + monotone(affine(box, module.shift_proj.weight, module.shift_proj.bias), module.act)
        return out
    raise IBPUnsupportedError(f"IBP has no bound for the output transform {type(module).__name__} of {owner}; "
                              "it bounds the identity and AdS (advssm.ads.AdaptiveScaling)")


def lti_layer(box: Box, layer: nn.Module, owner: str = "the layer") -> Box:
    """A whole LTI layer: mix -> output transform -> GELU -> (dropout: identity in eval) -> Linear -> GLU."""
    check_layer(layer, owner)
    out = gelu(output_transform(lti_mix(box, layer), layer.output_transform, owner))
    out = affine(out, layer.output_linear.weight, layer.output_linear.bias)
    return glu(out) if layer.glu else out


# ------------------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------------------
LTI_LAYERS = ("S4", "S4D", "DSS", "S5")


def check_layer(layer: nn.Module, owner: str) -> None:
    """Raise ``IBPUnsupportedError`` naming ``owner`` and the layer unless IBP bounds it."""
    name = type(layer).__name__
    if getattr(layer, "inner", None) and getattr(layer, "scan", None):  # a scan wrapper (layers/scans.py)
        name = f"{layer.inner} in a {layer.scan} scan"
    if not getattr(layer, "is_lti", False) or not isinstance(layer, LTILayer):
        kind = ("selective (its step size and B, C depend on the input)" if getattr(layer, "is_selective", False)
                or name in ("S6", "Mamba2") else "not linear time-invariant")
        raise IBPUnsupportedError(f"IBP cannot bound {owner}: layer {name} is {kind}; interval bound propagation "
                                  f"here covers the LTI layers {', '.join(LTI_LAYERS)} (use --method smoothing "
                                  "for the others)")
    if type(layer).project is not LTILayer.project:
        raise IBPUnsupportedError(f"IBP cannot bound {owner}: {name} overrides the LTI output projection")
    if not isinstance(layer.activation, nn.GELU) or layer.activation.approximate != "none":
        raise IBPUnsupportedError(f"IBP cannot bound {owner}: it bounds the exact GELU activation, "
                                  f"got {layer.activation!r}")


def check_model(model: nn.Module) -> None:
    """Raise ``IBPUnsupportedError`` naming the first component IBP cannot bound (before any computation)."""
    for attr in ("embedding", "embed_norm", "blocks", "final_norm", "head"):
        if not hasattr(model, attr):
            raise IBPUnsupportedError(f"IBP needs a model built by advssm.ssm_layers.build_model (it has no "
                                      f"{attr!r}); got {type(model).__name__}")
    if not callable(getattr(model.embedding, "tokens", None)) or not isinstance(model.embedding, nn.Linear):
        raise IBPUnsupportedError(f"IBP cannot bound the embedding {type(model.embedding).__name__}: it bounds "
                                  "a Linear over the input's tokens (pixels or patches)")
    for i, block in enumerate(model.blocks):
        check_layer(block.layer, f"block {i}")


def pooled_box(model: nn.Module, x: Tensor, eps: float) -> Box:
    """The box of the pooled features (the head's input) over the Linf ball of radius ``eps`` around ``x``."""
    check_model(model)
    box = input_box(x, eps)
    embedding = model.embedding
    tokens = Box(*(_tokens(embedding, t) for t in (box.center, box.radius)))
    box = normalization(affine(tokens, embedding.weight, embedding.bias), model.embed_norm, "the embedding")
    cls_token, pos_embed = getattr(model, "cls_token", None), getattr(model, "pos_embed", None)
    if cls_token is not None:
        cls = cls_token.detach().double().expand(box.center.shape[0], -1, -1)
        box = Box(torch.cat([box.center, cls], 1), torch.cat([box.radius, torch.zeros_like(cls)], 1))
    if pos_embed is not None:
        box = Box(box.center + pos_embed.detach().double(), box.radius)
    for i, block in enumerate(model.blocks):
        inner = normalization(box, block.norm, f"block {i}") if block.prenorm else box
        box = box + lti_layer(inner, block.layer, f"block {i}")
        if not block.prenorm:
            box = normalization(box, block.norm, f"block {i}")
    box = normalization(box, model.final_norm, "the final norm")
    if cls_token is not None:
        return Box(box.center[:, -1], box.radius[:, -1])
    return Box(box.center.mean(1), box.radius.mean(1))


def _tokens(embedding: nn.Module, t: Tensor) -> Tensor:
    """``embedding.tokens(t)`` in float64: ``tokens`` casts to the model's dtype, so it rearranges the positions
    (exact as floats below 2^24 per example), and the float64 values are gathered by them."""
    dtype = embedding.weight.dtype
    exact = 2 ** (round(-math.log2(torch.finfo(dtype).eps)) + 1)  # integers the model's dtype holds exactly
    if t[0].numel() > exact:  # the positions would round in the model's dtype
        raise IBPUnsupportedError(f"IBP reads the token layout of a {dtype} model only up to {exact} input values "
                                  f"per example, got {t[0].numel()}; cast the model to float32 first (model.float())")
    positions = torch.arange(t[0].numel(), device=t.device, dtype=torch.float64).reshape(1, *t.shape[1:])
    order = embedding.tokens(positions).round().long()[0]  # (tokens, features): flat input positions
    return t.flatten(1)[:, order]


def logit_bounds(model: nn.Module, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(lower, upper), each (B, classes) float64: every input in the Linf ball of radius ``eps`` around ``x``
    (within [0, 1]) gives logits inside them."""
    with torch.no_grad():
        box = affine(pooled_box(model, x, eps), model.head.weight, model.head.bias)
    return box.lower, box.upper


def margin_lower_bounds(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """(B, classes) float64: a lower bound on ``z_y - z_j`` over the box for every class j (+inf at j = y)."""
    with torch.no_grad():
        pooled = pooled_box(model, x, eps)
        weight, bias = model.head.weight.detach().double(), model.head.bias.detach().double()
        y = y.to(weight.device)
        diff_w = weight[y][:, None, :] - weight[None, :, :]  # (B, classes, d)
        diff_b = bias[y][:, None] - bias[None, :]
        margins = (torch.einsum("bcd,bd->bc", diff_w, pooled.center) + diff_b
                   - torch.einsum("bcd,bd->bc", diff_w.abs(), pooled.radius))
        return margins.scatter(1, y[:, None], float("inf"))


def verify(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """(B,) bool: True where IBP proves that no input within Linf ``eps`` of ``x`` (in [0, 1]) changes the class
    from ``y`` (which must then also be the clean prediction).

    Example:
        >>> from advssm.ssm_layers import ModelConfig, build_model
        >>> model = build_model(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=1, n_classes=3)).eval()
        >>> x = torch.rand(4, 16, 1)
        >>> verify(model, x, model(x).argmax(1), eps=0.0).all().item()   # eps = 0: the clean prediction
        True
    """
    return margin_lower_bounds(model, x, y, eps).amin(1) > 0
