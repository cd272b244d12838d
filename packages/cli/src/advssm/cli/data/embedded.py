"""Data sets that need no files: scikit-learn's bundled handwritten digits (8x8, and upsampled to 28x28),
and MNIST-1D if installed."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0  # the split is part of the data set's definition, not of the run's seed
DIGITS28_SIZE = 28  # MNIST's side: 784-step pixel sequences


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits, pixels 0..16 scaled to [0, 1], as (N, 1, 8, 8).

    The train/test split (75/25, stratified) is fixed by a constant seed so every run sees the same test set.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


def load_digits28() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bundled digits upsampled to 28x28 (MNIST's size, 784-step pixel sequences), as (N, 1, 28, 28).

    Each 8x8 image of ``load_digits`` (same split: 1,347 train, 450 test) is resized by bilinear
    interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``, no antialiasing); a
    bilinear value is a convex combination of [0, 1] pixels, so the result stays in [0, 1]. Unlike MNIST
    the digit fills the frame (no 4-pixel border): 70 % of the training pixels are non-zero.
    It exists so that sequence-length effects (784 steps instead of 64) can be tried offline.

    Example:
        >>> x_tr, y_tr, x_te, y_te = load_digits28()
        >>> tuple(x_tr.shape), tuple(x_te.shape)
        ((1347, 1, 28, 28), (450, 1, 28, 28))
    """
    x_tr, y_tr, x_te, y_te = load_digits()
    up = lambda x: torch.nn.functional.interpolate(  # noqa: E731
        x, size=(DIGITS28_SIZE, DIGITS28_SIZE), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return up(x_tr), y_tr, up(x_te), y_te


def load_mnist1d(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST-1D generated offline by the ``mnist1d`` package, as sequences (N, 40, 1) scaled to [0, 1].

    The scaling uses the training set's min and max (clipped on the test set), so pixels stay in [0, 1]
    as the attacks assume.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DataError(
            "dataset 'mnist1d' needs the mnist1d package: pip install mnist1d (or, in a clone of the repository, "
            "pip install './packages/cli[mnist1d]')"
        ) from exc
    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    x_tr, x_te = np.asarray(data["x"], np.float32), np.asarray(data["x_test"], np.float32)
    lo, hi = x_tr.min(), x_tr.max()
    scale = lambda a: torch.from_numpy(np.clip((a - lo) / (hi - lo), 0, 1))[..., None]  # noqa: E731
    y_tr = torch.from_numpy(np.asarray(data["y"], np.int64))
    y_te = torch.from_numpy(np.asarray(data["y_test"], np.int64))
    return scale(x_tr), y_tr, scale(x_te), y_te
