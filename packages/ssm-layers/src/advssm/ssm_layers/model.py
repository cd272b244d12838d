"""The classifier backbone: pixels as tokens -> Linear embedding -> residual SSM blocks ->
mean pooling -> linear head, configured by one JSON-serialisable ``ModelConfig``.

Images (B, C, H, W) become (B, H*W, C) with a permute (the paper's code uses
``x.view(B, H*W, C)``, which scrambles channels when C > 1; we do not). Sequences
(B, L, C) pass through; (B, L) is read as one channel. Inputs stay in [0, 1]: any
normalisation belongs inside the model so that attacks see [0, 1].
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import LAYERS
from .transforms import build_transform


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    layer: str = "s4d"
    d_input: int = 1
    d_model: int = 128
    d_state: int = 64
    n_layers: int = 2
    n_classes: int = 10
    dropout: float = 0.0
    prenorm: bool = False
    transform: str = "identity"
    transform_options: dict = field(default_factory=dict)
    transform_layers: list[int] | None = None
    layer_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"ModelConfig.layer: unknown layer {self.layer!r}; choose one of {', '.join(LAYERS)}")
        for name in ("d_input", "d_model", "d_state", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"ModelConfig.n_classes must be an int >= 2, got {self.n_classes!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.transform_layers is not None:
            bad = [i for i in self.transform_layers if not 0 <= int(i) < self.n_layers]
            if bad:
                raise ValueError(
                    f"ModelConfig.transform_layers: block indices {bad} are outside 0..{self.n_layers - 1}"
                )
            self.transform_layers = [int(i) for i in self.transform_layers]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"ModelConfig: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


# The paper's models (arXiv 2406.05532; docs/reproducing.md lists them); Mamba uses d_state 16 on CIFAR-10 and
# Mega's EMA dimension (its d_state) is 16 everywhere.
PRESETS: dict[str, dict] = {
    "mnist": dict(d_input=1, d_model=128, d_state=32, n_layers=2, n_classes=10),
    "cifar10": dict(d_input=3, d_model=128, d_state=64, n_layers=4, n_classes=10),
    "tinyimagenet": dict(d_input=3, d_model=128, d_state=64, n_layers=4, n_classes=50),
}


def preset(name: str, **overrides) -> ModelConfig:
    """The paper's model for a data set ("mnist", "cifar10", "tinyimagenet"), with overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    layer = overrides.get("layer")
    if "d_state" not in overrides and (layer == "mega" or (name == "cifar10" and layer == "s6")):
        values["d_state"] = 16
    values.update(overrides)
    return ModelConfig.from_dict(values)


def _make_layer(config: ModelConfig) -> nn.Module:
    cls = LAYERS[config.layer]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in (("d_state", config.d_state), ("dropout", config.dropout)) if k in accepted}
    kwargs.update(config.layer_options)
    try:
        return cls(config.d_model, **kwargs)
    except TypeError as exc:
        raise ValueError(f"ModelConfig.layer_options do not fit layer {config.layer!r}: {exc}") from exc


class Block(nn.Module):
    """x <- norm(x + layer(x)) (post-norm, the paper's) or x <- x + layer(norm(x)) (pre-norm)."""

    def __init__(self, layer: nn.Module, d_model: int, prenorm: bool):
        super().__init__()
        self.layer, self.norm, self.prenorm = layer, nn.LayerNorm(d_model), prenorm

    def forward(self, x: torch.Tensor, trace: dict | None = None, prefix: str = "") -> torch.Tensor:
        inner = self.norm(x) if self.prenorm else x
        if trace is None:
            out = self.layer(inner)
        else:
            layer = self.layer
            layer._check_input(inner)
            trace[prefix + "mix"] = y = layer.mix(inner)
            trace[prefix + "transform"] = y = layer.output_transform(y)
            trace[prefix + "project"] = out = layer.project(y, inner)
        x = x + out
        if trace is not None:
            trace[prefix + "residual"] = x
        if not self.prenorm:
            x = self.norm(x)
        if trace is not None:
            trace[prefix + "norm"] = x
        return x


class PixelEmbedding(nn.Linear):
    """Pixels as tokens, then ``Linear(d_input, d_model)``: the model's first layer.

    It takes the model's input itself (images or sequences in [0, 1]), not tokens, so that the
    first-layer protocol holds: ``model(x)`` runs it exactly once on ``x``, and YOPO can evaluate its
    Hamiltonian at ``first_layer(x + eta)``. A subclass of ``nn.Linear`` keeps the parameter names
    ``embedding.weight`` / ``embedding.bias`` of checkpoint format v1.
    """

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W, C); (B, L, C) unchanged; (B, L) -> (B, L, 1).

        Floating inputs are cast to the model's dtype (float pixels fed to a model moved to
        double or half just work, and gradients flow back in the input's dtype); integer ones
        are refused, since [0, 255] pixels would silently be read as [0, 1] ones.
        """
        d = self.in_features
        if not x.is_floating_point():
            raise ValueError(f"expected floating inputs in [0, 1], got dtype {x.dtype}; convert images with "
                             "x.float() / 255 (or torchvision's ToTensor)")
        x = x.to(self.weight.dtype)
        if x.dim() == 4:
            if x.shape[1] != d:
                raise ValueError(f"expected images with {d} channel(s) (B, {d}, H, W), got {tuple(x.shape)}")
            return x.flatten(2).transpose(1, 2)
        if x.dim() == 3 and x.shape[-1] == d:
            return x
        if x.dim() == 2 and d == 1:
            return x.unsqueeze(-1)
        raise ValueError(
            f"expected images (B, {d}, H, W) or sequences (B, L, {d}), got shape {tuple(x.shape)}; "
            f"the model was built with d_input={d}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.tokens(x))


class SequenceClassifier(nn.Module):
    """Pixel-token sequence classifier over a stack of zoo layers."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = PixelEmbedding(config.d_input, config.d_model)
        self.embed_norm = nn.LayerNorm(config.d_model)
        self.blocks = nn.ModuleList(Block(_make_layer(config), config.d_model, config.prenorm)
                                    for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model) if config.prenorm else nn.Identity()
        self.head = nn.Linear(config.d_model, config.n_classes)
        if config.transform != "identity":
            self.set_transform(config.transform, config.transform_options, config.transform_layers)

    @property
    def prenorm(self) -> bool:
        return self.config.prenorm

    @property
    def first_layer(self) -> nn.Module:
        """The first layer, YOPO's Hamiltonian point: the pixel embedding, which takes the model's own input."""
        return self.embedding

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W, C); (B, L, C) unchanged; (B, L) -> (B, L, 1) (see ``PixelEmbedding``)."""
        return self.embedding.tokens(x)

    def _run(self, x: torch.Tensor, trace: dict | None) -> torch.Tensor:
        h = self.embed_norm(self.embedding(x))
        if trace is not None:
            trace["input"], trace["embedding"] = self.tokens(x), h
        for i, block in enumerate(self.blocks):
            h = block(h, trace, f"blocks.{i}.")
        pooled = self.final_norm(h).mean(dim=1)
        logits = self.head(pooled)
        if trace is not None:
            trace["pool"], trace["logits"] = pooled, logits
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)

    def forward_trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate activation, in order (for the error-propagation analysis)."""
        trace: dict[str, torch.Tensor] = OrderedDict()
        self._run(x, trace)
        return trace

    def set_transform(self, name: str, options: dict | None = None, layers: list[int] | None = None) -> None:
        """Put the registered output transform ``name`` into the chosen blocks' slots (None: all)
        and reset the others to identity; the config follows, so checkpoints record it."""
        options = dict(options or {})
        n = len(self.blocks)
        chosen = set(range(n)) if layers is None else {int(i) for i in layers}
        bad = sorted(i for i in chosen if not 0 <= i < n)
        if bad:
            raise ValueError(f"set_transform: block indices {bad} are outside 0..{n - 1}")
        for i, block in enumerate(self.blocks):
            layer = block.layer
            if not getattr(layer, "has_output_transform", False):
                continue
            ref = next(layer.parameters(), torch.empty(0))
            module = build_transform(name, layer.transform_dim, **options) if i in chosen else nn.Identity()
            layer.output_transform = module.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        self.config.transform = name
        self.config.transform_options = options if name != "identity" else {}
        self.config.transform_layers = None if (layers is None or name == "identity") else sorted(chosen)


def build_model(config: ModelConfig | dict) -> SequenceClassifier:
    """Build a ``SequenceClassifier`` from a ``ModelConfig`` (or its dict)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig or a dict, got {type(config).__name__}")
    return SequenceClassifier(copy.deepcopy(config))
