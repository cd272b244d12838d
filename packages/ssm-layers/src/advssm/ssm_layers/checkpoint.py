"""The advssm checkpoint: one ``.safetensors`` file, tensors plus string metadata.

Metadata keys (all strings, JSON where structured):
    format          "advssm-checkpoint"
    format_version  "1"  (see FORMAT_HISTORY)
    model_config    ModelConfig as JSON
    packages        {"advssm-ssm-layers": "0.1.0", "torch": "...", ...} as JSON
    user            the caller's metadata as JSON

Nothing is ever unpickled: safetensors stores raw tensors, and the model is rebuilt
from its config. Writes go to a temporary file in the same folder and are renamed
into place, so a crash never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._version import __version__
from .model import ModelConfig, build_model
from .transforms import UnknownTransformError

FORMAT_NAME = "advssm-checkpoint"
FORMAT_VERSION = 1
FORMAT_HISTORY = {1: "first version: tensors = state_dict; metadata = format, format_version, model_config, "
                     "packages, user"}
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save's zip container


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or rebuilt; the message names the cause and the fix."""


def _package_versions() -> dict[str, str]:
    versions = {"advssm-ssm-layers": __version__, "torch": torch.__version__}
    for dist in ("advssm-ads", "advssm-adv-train", "advssm-cli"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, metadata: dict | None = None) -> None:
    """Write ``model`` (a SequenceClassifier) and JSON-serialisable ``metadata`` to ``path`` atomically."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise CheckpointError("save_checkpoint needs a model built by advssm.ssm_layers.build_model (it has a .config)")
    try:
        user = json.dumps(metadata or {}, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    # safetensors refuses shared or non-contiguous storage: store plain contiguous copies
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model_config": config.to_json(),
        "packages": json.dumps(_package_versions(), sort_keys=True),
        "user": user,
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


save_checkpoint.suffix = ".safetensors"


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata (format, model_config, packages, user) without loading tensors."""
    from safetensors import safe_open

    path = _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); the file is corrupt or truncated"
        ) from exc
    return _parse_metadata(path, raw)


def _check_file(path) -> Path:
    """Recognise the file from its first bytes, before any parser sees it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then a JSON object
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) == 9 and head[8:9] == b"{" and 8 + n <= size:
        return path
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path}: this is a pickle / torch.save file, not an advssm .safetensors checkpoint; advssm never "
            "unpickles files. Convert it by loading it yourself (if you trust it) and calling save_checkpoint"
        )
    raise CheckpointError(f"{path}: truncated or corrupt safetensors file (bad header)")


def _parse_metadata(path: Path, raw: dict) -> dict:
    if raw.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: a safetensors file of another format (format={raw.get('format')!r}); "
            f"expected an advssm checkpoint written by save_checkpoint"
        )
    try:
        version = int(raw.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: unreadable format_version {raw.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this advssm-ssm-layers ({__version__}) reads "
            f"(up to {FORMAT_VERSION}); upgrade advssm-ssm-layers"
        )
    try:
        return {
            "format": FORMAT_NAME,
            "format_version": version,
            "model_config": json.loads(raw["model_config"]),
            "packages": json.loads(raw.get("packages", "{}")),
            "user": json.loads(raw.get("user", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is damaged ({exc})") from exc


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model saved at ``path``; returns (model in eval mode, metadata)."""
    meta = read_metadata(path)
    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the stored model config is invalid: {exc}") from exc
    try:
        model = build_model(config)
    except UnknownTransformError as exc:
        raise CheckpointError(f"{path}: the model needs output transform {config.transform!r}: {exc}") from exc
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: tensors cannot be read ({exc}); the file is corrupt or truncated") from exc
    missing, unexpected = model.state_dict().keys() - tensors.keys(), tensors.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match the stored config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); the file was not written by save_checkpoint for this model"
        )
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: tensor shapes do not match the stored config: {exc}") from exc
    return model.to(map_location).eval(), meta
