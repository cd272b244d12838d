"""The advssm checkpoint: one ``.safetensors`` file, tensors plus string metadata.

Metadata keys (all strings, JSON where structured):
    format          "advssm-checkpoint"
    format_version  "1"  (see FORMAT_HISTORY)
    model_config    ModelConfig as JSON
    packages        {"advssm-ssm-layers": "0.1.0", "torch": "...", ...} as JSON
    user            the caller's metadata as JSON
    tensors_sha256  SHA-256 of every tensor's name, dtype, shape and bytes, in name order
                    (optional: files written without it load unverified)

Nothing is ever unpickled: safetensors stores raw tensors, and the model is rebuilt
from its config, in the dtype its tensors were saved in. Writes go to a temporary file in
the same folder, flushed to disk and renamed into place, so a crash never leaves a
half-written checkpoint under the final name. safetensors itself only checks the header;
the checksum catches damage to the tensor bytes (a flipped bit, a bad copy).
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import secrets
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ._version import __version__
from .model import ModelConfig, build_model
from .transforms import UnknownTransformError

FORMAT_NAME = "advssm-checkpoint"
FORMAT_VERSION = 1
FORMAT_HISTORY = {1: "first version: tensors = state_dict; metadata = format, format_version, model_config, "
                     "packages, user, and the optional tensors_sha256"}
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container
_PICKLE_PROTOCOLS = range(2, 6)  # a pickle of protocol >= 2 starts with 0x80 and its protocol byte
# a stored value takes at least 2 bytes (fp16 / bf16; advssm saves float32 unless the model was cast)
_MIN_BYTES_PER_WEIGHT = 2
_SMALL_BYTES = 16 * 2**20  # below this the size guard lets the build go ahead (it allocates at most 2x this)


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


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it onto ``path``.

    The temporary file lives in the target folder (a rename is only atomic within one file
    system) under a unique name, and is created by ``open``, so the checkpoint gets the
    permissions any new file gets (mkstemp, and safetensors' own writer, make it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.exists():
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(exc.errno, f"no space left on the device holding {path}: free some space and write it "
                                     "again (the previous file under that name is intact)") from exc
        raise
    _fsync_folder(path.parent)


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temporary files that a killed writer of ``path`` left (``.<name>.<pid>.<hex>.tmp`` whose
    process no longer exists); a live writer's are kept."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(path.name) + 2:].split(".")[0])
            os.kill(pid, 0)  # raises when no such process: its writer is gone
            alive = pid != os.getpid()  # our own pid: a write of ours that was cut (we write one at a time)
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:  # another user's live process
            alive = True
        if not alive:
            tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); folders cannot be opened for fsync on every platform."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and raw bytes of CPU tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # any dtype, bfloat16 included
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, metadata: dict | None = None) -> None:
    """Write ``model`` (a SequenceClassifier) and JSON-serialisable ``metadata`` to ``path`` atomically."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise CheckpointError("save_checkpoint needs a model built by advssm.ssm_layers.build_model (it has a .config)")
    try:
        user = json.dumps(metadata or {}, sort_keys=True)
        config_json = config.to_json()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata and the model config must be JSON-serialisable: {exc}") from exc
    # safetensors refuses shared or non-contiguous storage: store plain contiguous copies
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model_config": config_json,
        "packages": json.dumps(_package_versions(), sort_keys=True),
        "user": user,
        "tensors_sha256": tensors_digest(tensors),
    }
    atomic_write(path, save(tensors, metadata=header))


save_checkpoint.suffix = ".safetensors"


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata (format, model_config, packages, user) without loading tensors."""
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
    # safetensors: an 8-byte little-endian header length, then a JSON object. Its first byte is 0x80 for many
    # header lengths, so the '{' at byte 8 decides first: only then is a short file a cut safetensors file
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) == 9 and head[8:9] == b"{":
        if 8 + n <= size:
            return path
        raise CheckpointError(f"{path}: truncated safetensors file: its header announces {n} bytes of metadata but "
                              f"the file ends after {size} bytes (an interrupted copy or write); use another copy")
    if head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS):
        raise CheckpointError(
            f"{path}: this is a pickle / torch.save file, not an advssm .safetensors checkpoint; advssm never "
            "unpickles files. Convert it by loading it yourself (if you trust it) and calling save_checkpoint"
        )
    if size < 9:
        raise CheckpointError(f"{path}: truncated checkpoint ({size} bytes, shorter than a safetensors header)")
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
    if version not in FORMAT_HISTORY:  # 0, negative: no advssm ever wrote these
        raise CheckpointError(f"{path}: unknown checkpoint format version {version} (this advssm-ssm-layers reads "
                              f"{', '.join(map(str, sorted(FORMAT_HISTORY)))}); the file is damaged or not ours")
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


def state_numel(config: ModelConfig) -> int:
    """How many values the state dict of ``build_model(config)`` holds, found without allocating any: the model
    is built on PyTorch's meta device with one and with two blocks, and the blocks' count extrapolated (every
    block is built alike), so a config asking for d_state 1e9 or 10000 layers costs milliseconds to size.

    Example:
        >>> state_numel(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=3, d_input=1, n_classes=10)) > 0
        True
    """
    def numel(n_layers: int) -> int:
        values = config.to_dict()
        values["n_layers"] = n_layers
        if values.get("transform_layers") is not None:  # blocks beyond the small model's: fewer transformed
            values["transform_layers"] = [i for i in values["transform_layers"] if int(i) < n_layers]
        with torch.device("meta"):
            model = build_model(ModelConfig.from_dict(values))
        return sum(t.numel() for t in model.state_dict().values())

    one = numel(1)
    return one if config.n_layers == 1 else one + (config.n_layers - 1) * (numel(2) - one)


def _check_size(path: Path, config: ModelConfig) -> None:
    """Refuse, before anything is allocated, a config that needs more weights than the file holds (a damaged
    or hand-edited config: a 31 KB file asking for d_state 1e8 would allocate 8 GB). Every dimension counts:
    the state dict is sized on the meta device (``state_numel``), each value at least 2 bytes in the file."""
    dims = ", ".join(f"{k} {getattr(config, k)}" for k in ("d_model", "d_state", "n_layers"))
    try:
        need = state_numel(config) * _MIN_BYTES_PER_WEIGHT
    except UnknownTransformError:
        return  # load_checkpoint names the missing plugin next
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the stored model config ({dims}) cannot be built: "
                              f"{' '.join(str(exc).split())}") from exc
    size = os.path.getsize(path)
    # a small mismatch allocates little: the exact tensor checks after the build name it better
    if need > size and need > _SMALL_BYTES:
        raise CheckpointError(f"{path}: the stored config ({dims}) needs at least {_mb(need)} of weights but the file "
                              f"holds {_mb(size)}; the config or the file is damaged, nothing was allocated")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _stored_checksum(path: Path) -> str | None:
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("tensors_sha256")


def _match_stored_dtypes(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give each floating parameter / buffer the dtype it was saved in (a model saved after .double()
    or .half() comes back so). ``.data`` keeps the Parameter objects and their attributes."""
    for name, current in itertools.chain(model.named_parameters(), model.named_buffers()):
        stored = tensors.get(name)
        if stored is not None and stored.dtype != current.dtype and stored.is_floating_point() \
                and current.is_floating_point():
            current.data = current.data.to(stored.dtype)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model saved at ``path``; returns (model in eval mode, metadata)."""
    meta = read_metadata(path)
    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the stored model config is invalid: {exc}") from exc
    _check_size(Path(path), config)
    try:
        model = build_model(config)
    except UnknownTransformError as exc:
        raise CheckpointError(f"{path}: the model needs output transform {config.transform!r}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the stored model config cannot be built: {exc}") from exc
    try:
        tensors = load_file(str(path), device="cpu")
        checksum = _stored_checksum(Path(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: tensors cannot be read ({exc}); the file is corrupt or truncated") from exc
    if checksum is not None and tensors_digest(tensors) != checksum:
        raise CheckpointError(f"{path}: the tensor data does not match the checksum stored with it; the file is "
                              "corrupt (damaged on disk or in a copy): use another copy of the checkpoint")
    missing, unexpected = model.state_dict().keys() - tensors.keys(), tensors.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match the stored config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); the file was not written by save_checkpoint for this model"
        )
    parameters = {name for name, _ in model.named_parameters()}  # buffers may hold -inf masks by design
    bad = [name for name in sorted(parameters & tensors.keys()) if tensors[name].is_floating_point() or
           tensors[name].is_complex()]
    bad = [name for name in bad if not bool(torch.isfinite(tensors[name]).all())]
    if bad:
        raise CheckpointError(f"{path}: the weights are not finite (NaN or inf in {len(bad)} tensor(s): "
                              f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the model was saved after its "
                              "training diverged, or the file was edited; use an earlier checkpoint")
    _match_stored_dtypes(model, tensors)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: tensor shapes do not match the stored config: {exc}") from exc
    return model.to(map_location).eval(), meta
