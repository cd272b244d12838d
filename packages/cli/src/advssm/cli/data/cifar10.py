"""CIFAR-10 from the python batches (``cifar-10-batches-py``) the data set is distributed as.

The format is pickled dicts of numpy arrays. Unpickling runs code, so the unpickler here allows
nothing but the classes needed to rebuild numpy arrays: a file that asks for anything else fails.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
# numpy array / scalar reconstruction (old and new module paths); _codecs.encode is how Python 3 writes
# bytes into protocol-2 pickles, a pure str -> bytes conversion
_ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only numpy arrays")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"], np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({exc}); re-download cifar-10-python.tar.gz") from exc
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CIFAR-10 as (N, 3, 32, 32) floats in [0, 1] and int64 labels: (x_train, y_train, x_test, y_test)."""
    root = Path(data_dir)
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    missing = [name for name in [*TRAIN_BATCHES, TEST_BATCH] if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 not found: missing {', '.join(missing)} in {root / FOLDER}. Extract cifar-10-python.tar.gz "
            f"into {root} (it creates {FOLDER}/), or pass --download (needs torchvision and network)"
        )
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    x_te, y_te = read_batch(folder / TEST_BATCH)
    x_tr, y_tr = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    images = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)  # noqa: E731
    return images(x_tr), torch.from_numpy(y_tr), images(x_te), torch.from_numpy(y_te)
