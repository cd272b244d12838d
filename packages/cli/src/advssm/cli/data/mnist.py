"""MNIST from its IDX files, gzipped or not, in DIR or DIR/MNIST/raw (torchvision's layout)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file of unsigned bytes (``.gz`` is decompressed) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number); re-download it")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {body.size} bytes; re-download it")
    return body.reshape(shape)


def _find(root: Path, name: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw", root / "mnist"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_mnist(data_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST as (N, 1, 28, 28) floats in [0, 1] and int64 labels: (x_train, y_train, x_test, y_test)."""
    root = Path(data_dir)
    paths = {key: _find(root, name) for key, name in FILES.items()}
    missing = [FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise DataError(
            f"MNIST not found in {root}: missing {', '.join(missing)} (optionally .gz). Put the four IDX files "
            f"in {root} or {root / 'MNIST' / 'raw'}, or pass --download (needs torchvision and network)"
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    images = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    labels = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return (images(arrays["train_images"]), labels(arrays["train_labels"]),
            images(arrays["test_images"]), labels(arrays["test_labels"]))
