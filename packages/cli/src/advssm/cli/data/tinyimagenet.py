"""Tiny-ImageNet-200 from its folder layout; the paper keeps the first 50 classes of ``wnids.txt``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

FOLDER = "tiny-imagenet-200"
# the paper trains on the first 50 of Tiny-ImageNet's 200 classes (the tiny_classes default of a run)
PAPER_TINY_CLASSES = 50


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)  # some Tiny-ImageNet JPEGs are grayscale


def _stack(paths: list[Path]) -> torch.Tensor:
    if not paths:
        return torch.zeros(0, 3, 64, 64)
    return torch.from_numpy(np.stack([_read_image(p) for p in paths]).astype(np.float32) / 255.0).permute(0, 3, 1, 2)


def load_tinyimagenet(data_dir: str | Path, n_classes: int = 200):
    """Tiny-ImageNet as (N, 3, 64, 64) floats in [0, 1]: (x_train, y_train, x_val, y_val).

    Args:
        data_dir: folder holding ``tiny-imagenet-200/`` (or that folder itself).
        n_classes: keep the first ``n_classes`` classes in ``wnids.txt`` order (the paper: 50).
    """
    root = Path(data_dir)
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    needed = [folder / "wnids.txt", folder / "train", folder / "val" / "val_annotations.txt", folder / "val" / "images"]
    missing = [str(p.relative_to(folder)) for p in needed if not p.exists()]
    if missing:
        raise DataError(
            f"Tiny-ImageNet not found: missing {', '.join(missing)} in {root / FOLDER}. Unzip tiny-imagenet-200.zip "
            f"into {root} (it creates {FOLDER}/ with wnids.txt, train/<wnid>/images/, val/images/)"
        )
    wnids = [w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()]
    if not 1 <= n_classes <= len(wnids):
        raise DataError(f"tiny_classes={n_classes} but wnids.txt lists {len(wnids)} classes; choose 1..{len(wnids)}")
    label_of = {w: i for i, w in enumerate(wnids[:n_classes])}

    train_paths, train_labels = [], []
    for wnid, label in label_of.items():
        images = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        train_paths += images
        train_labels += [label] * len(images)

    val_paths, val_labels = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in label_of:
            val_paths.append(folder / "val" / "images" / parts[0])
            val_labels.append(label_of[parts[1]])
    if not train_paths:
        raise DataError(f"no training images under {folder / 'train'}/<wnid>/images/*.JPEG")
    as_labels = lambda ys: torch.tensor(ys, dtype=torch.int64)  # noqa: E731
    return _stack(train_paths), as_labels(train_labels), _stack(val_paths), as_labels(val_labels)
