"""The classifier backbone: pixels (or patches) as tokens -> Linear embedding -> residual SSM blocks ->
mean pooling (or a class token) -> linear head, configured by one JSON-serialisable ``ModelConfig``.

Images (B, C, H, W) become (B, H*W, C) with a permute (the paper's code uses
``x.view(B, H*W, C)``, which scrambles channels when C > 1; we do not). Sequences
(B, L, C) pass through; (B, L) is read as one channel. Inputs stay in [0, 1]: any
normalisation belongs inside the model so that attacks see [0, 1].

Vision models (Vim, VMamba): ``patch_size = p`` cuts images into non-overlapping p x p patches, one
token each ((H/p) * (W/p) tokens, row by row), embedded by ``Linear(C p p, d_model)``; ``pos_embed``
adds a learned position embedding (it needs ``image_size``), ``cls_token`` appends a learned class
token after the last patch and classifies from it (mean pooling otherwise). ``scan`` chooses the
order(s) in which every block's layer reads the tokens: "causal" (first to last), "bidirectional"
(Vim) or "cross2d" (VMamba's four directions over the patch grid); see ``layers/scans.py``.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import math
import typing
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import LAYERS
from .layers.scans import SCANS, ScanLayer, wrap_scan
from .transforms import build_transform

NORMS = ("layernorm", "rmsnorm")  # ModelConfig.norm


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint. Checked when made and frozen after (a
    change is a new config: ``dataclasses.replace(config, d_state=16)``, checked again)."""

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
    # pretrained Mamba backbones (advssm.ssm_layers.pretrained): RMSNorm blocks, no norm after the embedding
    norm: str = "layernorm"  # the norm of the blocks and the final norm: "layernorm" or "rmsnorm"
    norm_eps: float = 1e-5  # its epsilon (torch's LayerNorm default)
    embed_norm: bool = True  # a norm right after the embedding (the paper's models); False in a pretrained Mamba
    # vision models (None / False / "causal": the paper's pixel-token model)
    patch_size: int | None = None  # p x p patches as tokens; None: pixels as tokens
    image_size: int | None = None  # height = width of the input images; needed by pos_embed only
    pos_embed: bool = False  # a learned position embedding added to the tokens
    cls_token: bool = False  # a learned class token after the last patch, read by the head (else mean pooling)
    scan: str = "causal"  # "causal", "bidirectional" (Vim) or "cross2d" (VMamba's SS2D)

    def __post_init__(self) -> None:
        self._check_types()
        if self.layer not in LAYERS:
            raise ValueError(f"ModelConfig.layer: unknown layer {self.layer!r}; choose one of {', '.join(LAYERS)}")
        for name in ("d_input", "d_model", "d_state", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_classes < 2:
            raise ValueError(f"ModelConfig.n_classes must be an int >= 2, got {self.n_classes!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.transform_layers is not None:
            object.__setattr__(self, "transform_layers", list(self.transform_layers))  # a tuple as the list JSON keeps
            bad = [i for i in self.transform_layers if not 0 <= i < self.n_layers]
            if bad:
                raise ValueError(
                    f"ModelConfig.transform_layers: block indices {bad} are outside 0..{self.n_layers - 1}"
                )
        if self.norm not in NORMS:
            raise ValueError(f"ModelConfig.norm: unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be a positive number, got {self.norm_eps!r}")
        for name in ("patch_size", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int or None, got {value!r}")
        if self.scan not in SCANS:
            raise ValueError(f"ModelConfig.scan: unknown scan {self.scan!r}; choose one of {', '.join(SCANS)}")
        if self.pos_embed and self.image_size is None:
            raise ValueError("ModelConfig.pos_embed needs ModelConfig.image_size (the images' height = width, "
                             "e.g. 32 for CIFAR-10): the learned table has one row per token")
        if self.image_size is not None and self.patch_size is not None and self.image_size % self.patch_size:
            raise ValueError(f"ModelConfig.patch_size {self.patch_size} does not divide ModelConfig.image_size "
                             f"{self.image_size}; choose a divisor of {self.image_size}")

    def _check_types(self) -> None:
        """Every field's type, before any rule reads it: the one check of a config, whoever builds it (a dict
        from JSON, a TOML table, code), so a string "0.1" or a 1 for true is named here, not coerced."""
        need = {int: "an int", bool: "true or false", str: "a string"}
        for name, (kind, optional) in _field_kinds().items():
            value = getattr(self, name)
            if optional and value is None:
                continue
            if kind is list:  # transform_layers: block indices
                ok = isinstance(value, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                              for i in value)
                what = "a list of block indices (ints)"
            elif kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                what = "a finite number"
            elif kind is dict:
                ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
                what = "a table (dict) with string keys"
            else:
                ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
                what = need[kind]
            if not ok:
                raise ValueError(f"ModelConfig.{name} must be {what}{' or None' if optional else ''}, "
                                f"got {type(value).__name__} {value!r}")

    @property
    def n_tokens(self) -> int | None:
        """Tokens per image of ``image_size`` (patches, plus the class token); None without image_size."""
        if self.image_size is None:
            return None
        return (self.image_size // (self.patch_size or 1)) ** 2 + int(self.cls_token)

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


@functools.cache
def _field_kinds() -> dict[str, tuple[type, bool]]:
    """Each ModelConfig field's type, read from its annotation: (int, False) for ``int``, (list, True) for
    ``list[int] | None``; the annotations are the one statement of the types."""
    kinds = {}
    for name, hint in typing.get_type_hints(ModelConfig).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        base = args[0] if optional else hint
        kinds[name] = (typing.get_origin(base) or base, optional)
    return kinds


# The paper's models (arXiv 2406.05532; docs/reproducing.md lists them); Mamba uses d_state 16 on CIFAR-10 and
# Mega's EMA dimension (its d_state) is 16 everywhere.
PRESETS: dict[str, dict] = {
    "mnist": dict(d_input=1, d_model=128, d_state=32, n_layers=2, n_classes=10),
    "cifar10": dict(d_input=3, d_model=128, d_state=64, n_layers=4, n_classes=10),
    "tinyimagenet": dict(d_input=3, d_model=128, d_state=64, n_layers=4, n_classes=50),
}
# Small vision models in the spirit of Vim-Tiny (bidirectional Mamba over patches, class token, learned
# positions, pre-norm) and VMamba-Tiny (the four SS2D directions over the patch grid, mean pooling, no
# position embedding), flat (one stage, no downsampling) and scaled down to train in hours on one GPU;
# docs/reproducing.md ("Vision presets") gives their measured cost per epoch.
_VIM = dict(layer="s6", d_model=192, d_state=16, n_layers=12, prenorm=True, pos_embed=True, cls_token=True,
            scan="bidirectional", patch_size=4)
_VMAMBA = dict(layer="s6", d_model=128, d_state=16, n_layers=8, prenorm=True, scan="cross2d", patch_size=4)
VISION_PRESETS: dict[str, dict] = {
    "vim-cifar10": dict(_VIM, d_input=3, n_classes=10, image_size=32),
    "vmamba-cifar10": dict(_VMAMBA, d_input=3, n_classes=10, image_size=32),
    "vim-tinyimagenet": dict(_VIM, d_input=3, n_classes=50, image_size=64, patch_size=8),
    "vmamba-tinyimagenet": dict(_VMAMBA, d_input=3, n_classes=50, image_size=64, patch_size=8),
}


def preset(name: str, **overrides) -> ModelConfig:
    """The paper's model for a data set ("mnist", "cifar10", "tinyimagenet"), or a vision model
    ("vim-cifar10", "vmamba-cifar10", "vim-tinyimagenet", "vmamba-tinyimagenet"), with overrides.

    Example:
        >>> preset("vmamba-cifar10", n_layers=2).scan
        'cross2d'
    """
    presets = {**PRESETS, **VISION_PRESETS}
    if name not in presets:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(presets)}")
    values = dict(presets[name])
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


def _make_norm(config: ModelConfig) -> nn.Module:
    """The norm ``config.norm`` of width d_model (nn.RMSNorm has a weight only, as Mamba's RMSNorm)."""
    norm = nn.LayerNorm if config.norm == "layernorm" else nn.RMSNorm
    return norm(config.d_model, eps=float(config.norm_eps))


class Block(nn.Module):
    """x <- norm(x + layer(x)) (post-norm, the paper's) or x <- x + layer(norm(x)) (pre-norm).

    ``grid``: the (H, W) token grid, passed to a scan wrapper (``layers/scans.py``) and to nothing else.
    """

    def __init__(self, layer: nn.Module, d_model: int, prenorm: bool, norm: nn.Module | None = None):
        super().__init__()
        self.layer, self.prenorm = layer, prenorm
        self.norm = nn.LayerNorm(d_model) if norm is None else norm

    def forward(self, x: torch.Tensor, trace: dict | None = None, prefix: str = "",
                grid: tuple[int, int] | None = None) -> torch.Tensor:
        inner = self.norm(x) if self.prenorm else x
        kw = {"grid": grid} if isinstance(self.layer, ScanLayer) else {}
        if trace is None:
            out = self.layer(inner, **kw)
        else:
            layer = self.layer
            layer._check_input(inner)
            trace[prefix + "mix"] = y = layer.mix(inner, **kw)
            trace[prefix + "transform"] = y = layer.output_transform(y)
            trace[prefix + "project"] = out = layer.project(y, inner, **kw)
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
        x = _float_input(x, self.weight.dtype)
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

    def grid(self, x: torch.Tensor) -> tuple[int, int] | None:
        """The (H, W) token grid of images; None for sequences."""
        return tuple(x.shape[-2:]) if x.dim() == 4 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.tokens(x))


def _float_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` cast to the model's dtype; integer inputs refused (see ``PixelEmbedding.tokens``)."""
    if not x.is_floating_point():
        raise ValueError(f"expected floating inputs in [0, 1], got dtype {x.dtype}; convert images with "
                         "x.float() / 255 (or torchvision's ToTensor)")
    return x.to(dtype)


class PatchEmbedding(nn.Linear):
    """Non-overlapping p x p patches as tokens, then ``Linear(C p p, d_model)``: the first layer of a
    patch model (ViT's and Vim's patch embedding, a stride-p convolution written as a Linear).

    Like ``PixelEmbedding`` it takes the model's own input (images in [0, 1]), so YOPO's first-layer
    protocol holds, and its parameters are ``embedding.weight`` / ``embedding.bias``. Tokens run row by
    row over the (H/p, W/p) patch grid; a patch's features are ordered (channel, row, column).

    Example:
        >>> emb = PatchEmbedding(channels=3, patch_size=4, d_model=8)
        >>> emb(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 64, 8])
    """

    def __init__(self, channels: int, patch_size: int, d_model: int):
        super().__init__(channels * patch_size * patch_size, d_model)
        self.channels, self.patch_size = channels, patch_size

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The (H/p, W/p) patch grid of images (checked as ``tokens`` checks them)."""
        self._check(x)
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def _check(self, x: torch.Tensor) -> None:
        p, c = self.patch_size, self.channels
        if x.dim() != 4:
            raise ValueError(f"patch_size={p} needs images (B, {c}, H, W), got shape {tuple(x.shape)}; sequences "
                             "have no patches: set model.patch_size to none")
        if x.shape[1] != c:
            raise ValueError(f"expected images with {c} channel(s) (B, {c}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"patch_size={p} does not divide the {x.shape[-2]}x{x.shape[-1]} images; choose a "
                             "patch size that divides both sides")

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, (H/p)(W/p), C p p): the patches, row by row."""
        x = _float_input(x, self.weight.dtype)
        self._check(x)
        b, c, h, w = x.shape
        p = self.patch_size
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(b, (h // p) * (w // p), c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.tokens(x))


class SequenceClassifier(nn.Module):
    """Token sequence classifier (pixels or patches as tokens) over a stack of zoo layers."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        if config.patch_size is None:
            self.embedding = PixelEmbedding(config.d_input, d)
        else:
            self.embedding = PatchEmbedding(config.d_input, config.patch_size, d)
        self.embed_norm = _make_norm(config) if config.embed_norm else nn.Identity()
        # ViT's init of the class token and the position table: small normal values
        self.register_parameter("cls_token", nn.Parameter(0.02 * torch.randn(1, 1, d)) if config.cls_token else None)
        self.register_parameter("pos_embed", nn.Parameter(0.02 * torch.randn(1, config.n_tokens, d))
                                if config.pos_embed else None)
        self.blocks = nn.ModuleList(Block(wrap_scan(config.scan, lambda: _make_layer(config)), d, config.prenorm,
                                          _make_norm(config))
                                    for _ in range(config.n_layers))
        self.final_norm = _make_norm(config) if config.prenorm else nn.Identity()
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
        """The embedding's input tokens: (B, C, H, W) -> (B, H*W, C) pixels, or (B, (H/p)(W/p), C p p)
        patches; (B, L, C) unchanged; (B, L) -> (B, L, 1) (see ``PixelEmbedding``, ``PatchEmbedding``)."""
        return self.embedding.tokens(x)

    def token_grid(self, x: torch.Tensor) -> tuple[int, int] | None:
        """The (H, W) grid of the tokens of ``x`` (pixels or patches) for images, None for sequences."""
        return self.embedding.grid(x)

    def _run(self, x: torch.Tensor, trace: dict | None) -> torch.Tensor:
        h = self.embed_norm(self.embedding(x))
        if h.shape[1] == 0:  # each layer would fail its own way (a kernel of length 0, a reshape, a division)
            raise ValueError(f"the input {tuple(x.shape)} has no steps (L = 0); give at least one time step / pixel")
        grid = self.token_grid(x)
        if grid is None and self.config.scan == "cross2d":
            raise ValueError(f"scan 'cross2d' reads a 2-D token grid and needs images (B, C, H, W), got shape "
                             f"{tuple(x.shape)}; use scan 'bidirectional' or 'causal' for sequences")
        if grid is None:
            grid = (1, h.shape[1])  # a sequence is one row: a class token after it stays last in every direction
        if self.cls_token is not None:
            h = torch.cat([h, self.cls_token.expand(h.shape[0], -1, -1)], dim=1)
        if self.pos_embed is not None:
            if h.shape[1] != self.pos_embed.shape[1]:
                raise ValueError(f"the position embedding has {self.pos_embed.shape[1]} tokens (image_size "
                                 f"{self.config.image_size}, patch_size {self.config.patch_size}) but the input "
                                 f"{tuple(x.shape)} gives {h.shape[1]}; set model.image_size to the images' size")
            h = h + self.pos_embed
        if trace is not None:
            trace["input"], trace["embedding"] = self.tokens(x), h
        for i, block in enumerate(self.blocks):
            h = block(h, trace, f"blocks.{i}.", grid)
        h = self.final_norm(h)
        pooled = h[:, -1] if self.cls_token is not None else h.mean(dim=1)
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
            module = (layer.make_output_transform(lambda dim: build_transform(name, dim, **options)) if i in chosen
                      else nn.Identity())
            layer.output_transform = module.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        self.config = dataclasses.replace(
            self.config, transform=name, transform_options=options if name != "identity" else {},
            transform_layers=None if (layers is None or name == "identity") else sorted(chosen))


def build_model(config: ModelConfig | dict) -> SequenceClassifier:
    """Build a ``SequenceClassifier`` from a ``ModelConfig`` (or its dict)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig or a dict, got {type(config).__name__}")
    return SequenceClassifier(copy.deepcopy(config))
