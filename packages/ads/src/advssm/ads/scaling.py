"""Adaptive Scaling (AdS): a per-token, input-dependent rescaling of an SSM layer's output.

AdS sits in a layer's ``output_transform`` slot, between the sequence mixer and the output
projection (see ``advssm.ssm_layers.layers.base``). It is registered as the output transform
``"ads"`` through the ``advssm.transforms`` entry point declared in this package's
``pyproject.toml``, so ``build_transform("ads", dim, activation="relu")`` works and a model
config or checkpoint that names it rebuilds wherever advssm-ads is installed.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Iterable

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


class AdaptiveScaling(nn.Module):
    """Adaptive Scaling of an SSM output ``y`` (arXiv 2406.05532, section on AdS).

    With ``shift=True`` (the paper's final form) each token is mapped to::

        out = act(W_s y + b_s) * y + act(W_b y + b_b)

    and with ``shift=False`` (the earlier variant) to ``out = act(W y) * y``, with no bias
    and no shift. ``W_s``, ``W_b`` are ``d_model x d_model``.

    Initialisation: PyTorch's default ``nn.Linear`` init (weights and biases uniform in
    +-1/sqrt(d_model)), as in the paper's code, kept on purpose so that results reproduce
    it. No choice of weights makes AdS an exact identity for every activation (sigmoid and
    tanh never reach 1), and the default init already starts it as a mild, order-one gate:
    for tokens with unit-variance features the pre-activations ``W y + b`` have a standard
    deviation of about 1/sqrt(3) whatever d_model is, so with relu the scale is 0 for about
    half the channels and below 1.4 for 99 % of them (measured at d_model=128), and
    ``||AdS(y)|| / ||y||`` starts near 0.6: the signal is damped, never blown up.

    Args:
        d_model: feature size of the transformed tokens (the layer's ``transform_dim``).
        activation: ``"relu"`` (the paper's default), ``"sigmoid"`` or ``"tanh"``.
        shift: True for the scale-and-shift form, False for the scale-only variant.

    Shape: (..., d_model) -> (..., d_model).
    """

    def __init__(self, d_model: int, activation: str = "relu", shift: bool = True):
        super().__init__()
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
            raise ValueError(f"AdaptiveScaling: d_model must be a positive int, got {d_model!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"AdaptiveScaling: unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        if not isinstance(shift, bool):
            raise TypeError(f"AdaptiveScaling: shift must be True or False, got {shift!r}")
        self.d_model, self.activation, self.shift = d_model, activation, shift
        self.act = ACTIVATIONS[activation]
        self.scale_proj = nn.Linear(d_model, d_model, bias=shift)
        self.shift_proj = nn.Linear(d_model, d_model) if shift else None

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.shape[-1:] != (self.d_model,):
            raise ValueError(
                f"AdaptiveScaling expects inputs of shape (..., {self.d_model}), got {tuple(y.shape)}; "
                "build it with the layer's transform_dim"
            )
        out = self.act(self.scale_proj(y)) * y
        if self.shift_proj is not None:
            out = out + self.act(self.shift_proj(y))
        return out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, activation={self.activation!r}, shift={self.shift}"


def attach_ads(model: nn.Module, activation: str = "relu", layers: Iterable[int] | None = None,
               shift: bool = True) -> nn.Module:
    """Put Adaptive Scaling into the output-transform slot of a built model's SSM layers.

    Every block whose layer has the slot gets a fresh ``AdaptiveScaling(layer.transform_dim)``
    (the inner width for S6), or only the block indices in ``layers``; the other blocks are
    reset to identity. The model's ``config`` records the choice, so a checkpoint saved
    afterwards rebuilds with AdS. Equivalent to building from
    ``ModelConfig(transform="ads", transform_options={"activation": ..., "shift": ...})``.

    Returns the same model (modified in place), for chaining.
    """
    _check_model(model, "attach_ads")
    # Validate here so the error names AdS options before any slot is touched.
    AdaptiveScaling(1, activation=activation, shift=shift)
    chosen = None
    if layers is not None:
        try:
            if isinstance(layers, str) or any(isinstance(i, bool) for i in layers):
                raise TypeError
            chosen = sorted({operator.index(i) for i in layers})
        except TypeError:
            raise TypeError(
                f"attach_ads: layers must be a list of block indices (or None for all), got {layers!r}"
            ) from None
        if not chosen:
            raise ValueError("attach_ads: layers is empty; pass None for every block, or call detach_ads to remove AdS")
    model.set_transform("ads", {"activation": activation, "shift": shift}, chosen)
    _match_layer_dtype(model)
    return model


def detach_ads(model: nn.Module) -> nn.Module:
    """Remove every output transform (AdS included): all slots back to identity. Returns the model."""
    _check_model(model, "detach_ads")
    model.set_transform("identity")
    return model


def _match_layer_dtype(model: nn.Module) -> None:
    """Give each new AdS the floating dtype of its layer (a model cast with .double() stays double)."""
    for block in model.blocks:
        slot = block.layer.output_transform
        dtypes = [p.dtype for name, p in block.layer.named_parameters()
                  if p.is_floating_point() and not name.startswith("output_transform.")]
        if isinstance(slot, AdaptiveScaling) and dtypes:
            slot.to(dtypes[0])


def _check_model(model: object, caller: str) -> None:
    if not callable(getattr(model, "set_transform", None)):
        raise TypeError(
            f"{caller} expects a model built by advssm.ssm_layers.build_model (it needs set_transform), "
            f"got {type(model).__name__}"
        )
