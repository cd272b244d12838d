"""Pretrained Mamba and Mamba-2 language models as advssm classifiers, attacked in embedding space.

A checkpoint folder of Hugging Face ``transformers`` (``config.json`` with ``model_type`` "mamba" or
"mamba2", and ``model.safetensors``, sharded or not) or of ``mamba_ssm`` (``config.json`` with ``d_model``,
``n_layer``, ``ssm_cfg``, and ``pytorch_model.bin`` or ``model.safetensors``) becomes a
``SequenceClassifier``:

    inputs x in [0, 1]^(L x d)  --embedding: e = lo + x * (hi - lo)-->  inputs_embeds (B, L, d)
    --> their blocks (x <- x + mixer(RMSNorm(x)), mixer = our S6 or Mamba2 with their weights)
    --> their final norm (= their last hidden state) --> mean over tokens --> a new linear head

Their pre-norm RMSNorm residual blocks are our pre-norm blocks with ``norm = "rmsnorm"`` and no norm
after the embedding (``embed_norm = False``), so the hidden states are theirs: equal to
``MambaModel`` / ``Mamba2Model``'s ``last_hidden_state`` for the same ``inputs_embeds``
(``hidden_states`` below; tested against ``transformers``).

Why a box: advssm's attacks, training methods and checkpoints take inputs in [0, 1] (they clip to it and
their eps is measured there). Token embeddings are not in [0, 1], so the model's first layer is a fixed
affine map from the unit box onto the box [lo, hi] that holds every token's embedding (``box =
"coordinate"``: lo, hi the per-coordinate min and max over the vocabulary; ``"cube"``: one common min and
max, so that a step of eps is the same distance in every coordinate). That map is the model's
``embedding`` Linear (diagonal weight hi - lo, bias lo), so an eps-ball in x is an eps * (hi - lo)-box
around the token's embedding, and the attack stays inside the region where embeddings live. ``inputs``
turns token ids into such x. The embedding Linear is an ordinary parameter: freeze it
(``model.embedding.requires_grad_(False)``) to keep the box fixed while fine-tuning.

Weights are read without unpickling: safetensors files directly, ``pytorch_model.bin`` with
``torch.load(weights_only=True)``. A config that cannot be mapped (an unknown key, a layer kind we lack,
an option we do not implement) raises one ``PretrainedConfigError`` naming it.

    pretrained = load_pretrained("mamba-130m-hf", n_classes=2)
    x = pretrained.inputs(input_ids)             # (B, L) token ids -> (B, L, 768) in [0, 1]
    logits = pretrained.model(x)                 # attack x with any advssm attack
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .model import ModelConfig, SequenceClassifier, build_model

BOXES = ("coordinate", "cube")


class PretrainedConfigError(ValueError):
    """A pretrained checkpoint folder that cannot be read or mapped; the message names the cause and the fix."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a pretrained folder describes, in advssm's terms.

    Attributes:
        source: "transformers" or "mamba_ssm".
        layer: the advssm layer of its mixers, "s6" (Mamba) or "mamba2" (Mamba-2).
        d_model, n_layers, d_state: the backbone's width, depth and state size.
        norm, norm_eps: the norm of its blocks and final norm ("rmsnorm" or "layernorm") and its epsilon.
        vocab_size: the number of real tokens (rows of the embedding table beyond it are padding).
        layer_options: the advssm layer's other arguments (conv width, expand, heads, groups, ...).
    """

    source: str
    layer: str
    d_model: int
    n_layers: int
    d_state: int
    norm: str
    norm_eps: float
    vocab_size: int
    layer_options: dict = field(default_factory=dict)

    def model_config(self, n_classes: int) -> ModelConfig:
        """The advssm ``ModelConfig`` of this backbone with a new ``n_classes`` head (inputs: d_model features).

        Example:
            >>> spec = BackboneSpec("transformers", "s6", 16, 2, 4, "rmsnorm", 1e-5, 20, {"dt_rank": 1})
            >>> spec.model_config(n_classes=3).prenorm
            True
        """
        return ModelConfig(layer=self.layer, d_input=self.d_model, d_model=self.d_model, d_state=self.d_state,
                           n_layers=self.n_layers, n_classes=n_classes, dropout=0.0, prenorm=True, norm=self.norm,
                           norm_eps=self.norm_eps, embed_norm=False, layer_options=dict(self.layer_options))


@dataclass
class Pretrained:
    """A pretrained backbone as an advssm classifier, with what is needed to feed it tokens.

    Attributes:
        model: the ``SequenceClassifier`` (inputs (B, L, d_model) in [0, 1], see the module docstring).
        token_embeddings: the folder's embedding table, (vocab_size, d_model), padding rows dropped.
        spec: the folder's backbone in advssm's terms.
        box: "coordinate" or "cube".
    """

    model: SequenceClassifier
    token_embeddings: torch.Tensor
    spec: BackboneSpec
    box: str

    def inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> the model's inputs (B, L, d_model) in [0, 1] (their embeddings, in box coordinates).

        Example:
            >>> x = pretrained.inputs(torch.tensor([[3, 1, 4]]))  # doctest: +SKIP
        """
        if input_ids.dtype not in (torch.int32, torch.int64) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be integer token ids of shape (batch, length), got "
                             f"{input_ids.dtype} {tuple(input_ids.shape)}")
        bad = (input_ids < 0) | (input_ids >= self.token_embeddings.shape[0])
        if bad.any():
            raise ValueError(f"token id {int(input_ids[bad][0])} is outside the vocabulary "
                             f"0..{self.spec.vocab_size - 1}")
        return box_inputs(self.model, self.token_embeddings[input_ids])


def read_spec(folder: str | os.PathLike) -> BackboneSpec:
    """The backbone a ``transformers`` or ``mamba_ssm`` folder's ``config.json`` describes.

    Example:
        >>> read_spec("mamba-130m-hf").layer  # doctest: +SKIP
        's6'
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise PretrainedConfigError(f"{folder}: no config.json; expected a transformers or mamba_ssm checkpoint "
                                    "folder (config.json plus model.safetensors or pytorch_model.bin)")
    try:
        config = json.loads(path.read_text(), object_hook=_decode_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PretrainedConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise PretrainedConfigError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if "model_type" in config:
        return _transformers_spec(path, config)
    if "d_model" in config and "n_layer" in config:
        return _mamba_ssm_spec(path, config)
    raise PretrainedConfigError(f"{path}: neither a transformers config (no model_type) nor a mamba_ssm one "
                                "(no d_model / n_layer)")


# transformers: keys that do not change the backbone's forward pass (initialisation, tokens, generation,
# bookkeeping, kernels). residual_in_fp32 only matters below float32: our residual stream keeps the model's dtype.
_HF_NO_EFFECT = {
    "architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path", "model_type",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "tie_word_embeddings", "initializer_range",
    "vocab_size", "rescale_prenorm_residual", "residual_in_fp32", "time_step_min", "time_step_max",
    "time_step_floor",
}
_HF_REQUIRED = {"hidden_act": "silu", "use_bias": False, "use_conv_bias": True}
_HF_KEYS = {
    "mamba": {"hidden_size", "state_size", "num_hidden_layers", "layer_norm_epsilon", "expand", "conv_kernel",
              "intermediate_size", "time_step_rank", "time_step_scale", "time_step_init_scheme", "use_mambapy",
              "use_associative_scan"},
    # norm_before_gate and rms_norm: written by transformers 4.x's Mamba2Config; its Mamba2Mixer never read them
    # (always the gated RMSNorm, gate before norm), so neither do we: the hidden states stay transformers'
    "mamba2": {"hidden_size", "state_size", "num_hidden_layers", "layer_norm_epsilon", "expand", "conv_kernel",
               "num_heads", "head_dim", "n_groups", "chunk_size", "time_step_limit", "time_step_rank",
               "time_step_scale", "time_step_init_scheme", "norm_before_gate", "rms_norm"},
}
_HF_DEFAULTS = {  # transformers' defaults, for keys an older config.json may leave out
    "mamba": {"state_size": 16, "layer_norm_epsilon": 1e-5, "expand": 2, "conv_kernel": 4, "time_step_rank": "auto"},
    "mamba2": {"state_size": 128, "layer_norm_epsilon": 1e-5, "expand": 2, "conv_kernel": 4, "n_groups": 8,
               "head_dim": 64, "chunk_size": 256, "time_step_limit": (0.0, math.inf)},
}


def _transformers_spec(path: Path, config: dict) -> BackboneSpec:
    kind = config["model_type"]
    if kind not in _HF_KEYS:
        raise PretrainedConfigError(f"{path}: model_type {kind!r} is not a layer kind advssm has; it reads "
                                    f"{', '.join(_HF_KEYS)} (as transformers' MambaModel / Mamba2Model)")
    _refuse_unknown(path, config, _HF_KEYS[kind] | _HF_NO_EFFECT | set(_HF_REQUIRED))
    _require(path, config, _HF_REQUIRED)
    c = {**_HF_DEFAULTS[kind], **config}
    d_model = _int(path, c, "hidden_size")
    expand = _int(path, c, "expand")
    common = dict(source="transformers", d_model=d_model, n_layers=_int(path, c, "num_hidden_layers"),
                  d_state=_int(path, c, "state_size"), norm="rmsnorm", norm_eps=float(c["layer_norm_epsilon"]),
                  vocab_size=_int(path, c, "vocab_size"))
    if kind == "mamba":
        if "intermediate_size" in c and c["intermediate_size"] != expand * d_model:
            raise PretrainedConfigError(f"{path}: intermediate_size {c['intermediate_size']} is not expand * "
                                        f"hidden_size = {expand * d_model}; the config is inconsistent")
        options = {"d_conv": _int(path, c, "conv_kernel"), "expand": expand,
                   "dt_rank": "auto" if c["time_step_rank"] == "auto" else _int(path, c, "time_step_rank")}
        return BackboneSpec(layer="s6", layer_options=options, **common)
    heads, head_dim = _int(path, c, "num_heads"), _int(path, c, "head_dim")
    if heads * head_dim != expand * d_model:
        raise PretrainedConfigError(f"{path}: num_heads * head_dim = {heads * head_dim} is not expand * hidden_size "
                                    f"= {expand * d_model}; the config is inconsistent")
    options = {"head_dim": head_dim, "n_groups": _int(path, c, "n_groups"), "d_conv": _int(path, c, "conv_kernel"),
               "expand": expand, "chunk_size": _int(path, c, "chunk_size"), "norm_eps": float(c["layer_norm_epsilon"]),
               **_dt_limit(path, c["time_step_limit"])}
    return BackboneSpec(layer="mamba2", layer_options=options, **common)


# mamba_ssm's MambaConfig and the ssm_cfg of its Mamba (Mamba1) and Mamba2 layers. Values in _*_REQUIRED are
# the only ones we implement; _*_NO_EFFECT keys change initialisation or the kernels used, not the function.
_MS_KEYS = {"d_model", "n_layer", "vocab_size", "ssm_cfg", "rms_norm", "d_intermediate", "attn_layer_idx",
            "attn_cfg"}
_MS_NO_EFFECT = {"residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"}
_MS_REQUIRED = {"d_intermediate": 0, "attn_layer_idx": []}
_MS_LAYER_KEYS = {
    "Mamba1": {"d_state", "d_conv", "expand", "dt_rank"},
    "Mamba2": {"d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "dt_limit", "d_ssm"},
}
_MS_LAYER_NO_EFFECT = {
    "Mamba1": {"layer", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path"},
    "Mamba2": {"layer", "conv_init", "A_init_range", "dt_min", "dt_max", "dt_init_floor", "use_mem_eff_path"},
}
_MS_LAYER_REQUIRED = {
    "Mamba1": {"conv_bias": True, "bias": False},
    "Mamba2": {"conv_bias": True, "bias": False, "D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False},
}
_MS_LAYER_DEFAULTS = {  # mamba_ssm's defaults
    "Mamba1": {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto"},
    "Mamba2": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256,
               "dt_limit": (0.0, math.inf), "d_ssm": None},
}
_MS_NORM_EPS = 1e-5  # mamba_ssm's norm_epsilon (not stored in its config.json) and its gated RMSNorm's eps


def _mamba_ssm_spec(path: Path, config: dict) -> BackboneSpec:
    _refuse_unknown(path, config, _MS_KEYS | _MS_NO_EFFECT)
    c = {"rms_norm": True, "d_intermediate": 0, "attn_layer_idx": [], "ssm_cfg": {}, **config}
    if c["d_intermediate"] != 0:
        raise PretrainedConfigError(f"{path}: d_intermediate {c['d_intermediate']} adds an MLP to every block; "
                                    "advssm's blocks have none (only d_intermediate = 0 is supported)")
    if list(c["attn_layer_idx"] or []):
        raise PretrainedConfigError(f"{path}: attn_layer_idx {c['attn_layer_idx']} puts attention layers in the "
                                    "backbone; advssm maps pure Mamba / Mamba-2 backbones only")
    ssm = dict(c["ssm_cfg"] or {})
    kind = ssm.get("layer", "Mamba1")
    if kind not in _MS_LAYER_KEYS:
        raise PretrainedConfigError(f"{path}: ssm_cfg.layer {kind!r} is not a layer kind advssm has; it reads "
                                    f"{', '.join(_MS_LAYER_KEYS)}")
    _refuse_unknown(path, ssm, _MS_LAYER_KEYS[kind] | _MS_LAYER_NO_EFFECT[kind] | set(_MS_LAYER_REQUIRED[kind]),
                    where="ssm_cfg.")
    _require(path, ssm, _MS_LAYER_REQUIRED[kind], where="ssm_cfg.")
    s = {**_MS_LAYER_DEFAULTS[kind], **ssm}
    d_model = _int(path, c, "d_model")
    expand = _int(path, s, "expand")
    common = dict(source="mamba_ssm", d_model=d_model, n_layers=_int(path, c, "n_layer"),
                  d_state=_int(path, s, "d_state"), norm="rmsnorm" if c["rms_norm"] else "layernorm",
                  norm_eps=_MS_NORM_EPS, vocab_size=_int(path, c, "vocab_size"))
    if kind == "Mamba1":
        options = {"d_conv": _int(path, s, "d_conv"), "expand": expand,
                   "dt_rank": "auto" if s["dt_rank"] == "auto" else _int(path, s, "dt_rank")}
        return BackboneSpec(layer="s6", layer_options=options, **common)
    if s["d_ssm"] is not None and s["d_ssm"] != expand * d_model:
        raise PretrainedConfigError(f"{path}: ssm_cfg.d_ssm {s['d_ssm']} runs the SSM on part of the channels only; "
                                    f"advssm's Mamba2 needs d_ssm = expand * d_model = {expand * d_model} (or null)")
    options = {"head_dim": _int(path, s, "headdim"), "n_groups": _int(path, s, "ngroups"),
               "d_conv": _int(path, s, "d_conv"), "expand": expand, "chunk_size": _int(path, s, "chunk_size"),
               "norm_eps": _MS_NORM_EPS, **_dt_limit(path, s["dt_limit"])}
    return BackboneSpec(layer="mamba2", layer_options=options, **common)


def _decode_float(obj: dict):
    """transformers >= 5 writes non-finite floats as {"__float__": "Infinity"}."""
    if set(obj) == {"__float__"}:
        return float(obj["__float__"])
    return obj


def _refuse_unknown(path: Path, config: dict, known: set, where: str = "") -> None:
    unknown = sorted(set(config) - known)
    if unknown:
        raise PretrainedConfigError(
            f"{path}: unknown config key(s) {', '.join(where + k for k in unknown)}: advssm does not know what they "
            "change in the backbone, so it does not guess. If they are harmless (bookkeeping, initialisation), "
            "delete them from config.json and convert again")


def _require(path: Path, config: dict, required: dict, where: str = "") -> None:
    for key, value in required.items():
        if key in config and config[key] != value:
            raise PretrainedConfigError(f"{path}: {where}{key} = {json.dumps(config[key])} is not supported "
                                        f"(advssm's layers implement {where}{key} = {json.dumps(value)} only)")


def _int(path: Path, config: dict, key: str) -> int:
    value = config.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PretrainedConfigError(f"{path}: {key} must be a positive int, got {value!r}")
    return value


def _dt_limit(path: Path, value) -> dict:
    """``{"dt_limit": (lo, hi)}``, or nothing for the default (0, inf) (kept out of the JSON config)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise PretrainedConfigError(f"{path}: the step-size limit must be a pair (min, max), got {value!r}") from None
    return {} if (lo, hi) == (0.0, math.inf) else {"dt_limit": [lo, hi]}


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The folder's tensors by name: ``model.safetensors`` (or its sharded index) read directly, else
    ``pytorch_model.bin`` (or its index) with ``torch.load(weights_only=True)``, which never runs pickled code.

    Example:
        >>> sorted(read_weights("mamba-130m-hf"))[:1]  # doctest: +SKIP
        ['backbone.embeddings.weight']
    """
    folder = Path(folder)
    for name, load in (("model.safetensors", load_file), ("pytorch_model.bin", _load_bin)):
        if (folder / name).is_file():
            return _read(folder / name, load)
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise PretrainedConfigError(f"{index}: not a weight index (no weight_map): {exc}") from exc
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(_read(folder / shard, load))
            return tensors
    raise PretrainedConfigError(f"{folder}: no weights: expected model.safetensors or pytorch_model.bin "
                                "(or a sharded *.index.json of either)")


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _read(path: Path, load) -> dict[str, torch.Tensor]:
    try:
        tensors = load(str(path))
    except Exception as exc:  # safetensors' and torch's errors have no common base; name the file either way
        raise PretrainedConfigError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise PretrainedConfigError(f"{path}: expected a flat dict of tensors (a state dict)")
    return tensors


def backbone_tensors(spec: BackboneSpec, weights: dict[str, torch.Tensor]) -> tuple[dict, torch.Tensor]:
    """Their tensors under advssm's names (``blocks.i.norm.*``, ``blocks.i.layer.*``, ``final_norm.*``) and
    their token embedding table (padding rows dropped). Any other tensor but the LM head is an error."""
    strip = "backbone." if any(k.startswith("backbone.") for k in weights) else ""
    mapped, embeddings = {}, None
    for key, tensor in weights.items():
        if strip and not key.startswith(strip):
            if key == "lm_head.weight":  # the language-model head: replaced by the classification head
                continue
            raise PretrainedConfigError(f"unexpected tensor {key!r} outside the backbone; advssm maps "
                                        "backbone.embedding(s), backbone.layers.*.{norm,mixer}.*, backbone.norm_f")
        name = key[len(strip):]
        parts = name.split(".")
        if name in ("embedding.weight", "embeddings.weight"):
            embeddings = tensor
        elif parts[0] == "norm_f":
            mapped["final_norm." + ".".join(parts[1:])] = tensor
        elif parts[0] == "layers" and len(parts) > 3 and parts[1].isdigit() and parts[2] in ("norm", "mixer"):
            inner = "norm" if parts[2] == "norm" else "layer"
            mapped[f"blocks.{parts[1]}.{inner}." + ".".join(parts[3:])] = tensor
        elif name == "lm_head.weight":
            continue
        else:
            raise PretrainedConfigError(f"unexpected tensor {key!r}: not part of a pure Mamba / Mamba-2 backbone "
                                        "(MLP, attention or extra norms are not mapped)")
    if embeddings is None:
        raise PretrainedConfigError("the weights hold no token embedding table (backbone.embedding(s).weight); it "
                                    "defines the input box, so it is needed")
    if embeddings.dim() != 2 or embeddings.shape[0] < spec.vocab_size or embeddings.shape[1] != spec.d_model:
        raise PretrainedConfigError(f"the token embedding table has shape {tuple(embeddings.shape)}; the config "
                                    f"says vocab_size {spec.vocab_size} x d_model {spec.d_model}")
    return mapped, embeddings[:spec.vocab_size]


def set_box(model: SequenceClassifier, token_embeddings: torch.Tensor, box: str = "coordinate") -> None:
    """Make the model's embedding the affine map from [0, 1]^d onto the box holding every token's embedding."""
    if box not in BOXES:
        raise ValueError(f"unknown box {box!r}; choose one of {', '.join(BOXES)}")
    table = token_embeddings.detach().to(torch.float64)
    lo, hi = (table.min(0).values, table.max(0).values) if box == "coordinate" else (
        table.min().expand(table.shape[1]), table.max().expand(table.shape[1]))
    emb = model.embedding
    with torch.no_grad():
        emb.weight.copy_(torch.diag(hi - lo).to(emb.weight.dtype))
        emb.bias.copy_(lo.to(emb.bias.dtype))


def box_inputs(model: SequenceClassifier, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """The model inputs x whose embedding is ``inputs_embeds``: (e - lo) / (hi - lo), with the box read from the
    model's (diagonal) embedding; coordinates where hi = lo (every token agrees) are 0.

    Example:
        >>> x = box_inputs(pretrained.model, token_embeddings[input_ids])  # doctest: +SKIP
    """
    emb = model.embedding
    scale = torch.diagonal(emb.weight.detach())
    if not torch.equal(torch.diag(scale), emb.weight.detach()):
        raise ValueError("the model's embedding is not a diagonal box map (it was trained or not built by "
                         "load_pretrained); map embeddings to inputs yourself")
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return ((inputs_embeds.to(scale.dtype) - emb.bias.detach()) / safe) * (scale != 0)


def load_pretrained(folder: str | os.PathLike, n_classes: int = 2, box: str = "coordinate",
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> Pretrained:
    """A ``transformers`` or ``mamba_ssm`` Mamba / Mamba-2 folder as an advssm classifier with a new head.

    The head (``n_classes`` outputs over the mean of the last hidden states) is initialised from ``seed``;
    everything else is the folder's weights, in ``dtype``. See the module docstring for the input box.

    Example:
        >>> pretrained = load_pretrained("mamba-130m-hf", n_classes=2)  # doctest: +SKIP
        >>> pretrained.model(pretrained.inputs(torch.tensor([[1, 2, 3]]))).shape  # doctest: +SKIP
        torch.Size([1, 2])
    """
    if box not in BOXES:
        raise ValueError(f"unknown box {box!r}; choose one of {', '.join(BOXES)}")
    spec = read_spec(folder)
    mapped, table = backbone_tensors(spec, read_weights(folder))
    config = spec.model_config(n_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config)
    model = model.to(dtype)
    expected = {k for k in model.state_dict() if not k.startswith(("embedding.", "head."))}
    missing, unexpected = sorted(expected - mapped.keys()), sorted(mapped.keys() - expected)
    if missing or unexpected:
        raise PretrainedConfigError(f"{folder}: the weights do not fit the config (missing {missing[:4]}, "
                                    f"unexpected {unexpected[:4]})")
    shapes = model.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(shapes[k].shape)}" for k, v in mapped.items()
             if v.shape != shapes[k].shape]
    if wrong:
        raise PretrainedConfigError(f"{folder}: tensor shapes do not fit the config: {'; '.join(wrong[:3])}")
    model.load_state_dict({k: v.to(dtype) for k, v in mapped.items()}, strict=False)
    set_box(model, table, box)
    return Pretrained(model=model.eval(), token_embeddings=table.to(dtype), spec=spec, box=box)


def hidden_states(model: SequenceClassifier, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last hidden states for inputs ``x``: the final norm of the last block's output,
    (B, L, d_model): what ``MambaModel`` / ``Mamba2Model`` return as ``last_hidden_state``.

    Example:
        >>> h = hidden_states(pretrained.model, pretrained.inputs(input_ids))  # doctest: +SKIP
    """
    trace = model.forward_trace(x)
    return model.final_norm(trace[f"blocks.{len(model.blocks) - 1}.norm"])
