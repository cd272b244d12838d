"""Data sets for the CLI, all held in memory as ``TensorDataset``s of [0, 1] inputs and int64 labels.

``load_dataset(name, ...)`` is the one entry point; ``DATASETS`` lists the names it accepts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError, DataError
from .augment import CropFlip
from .cifar10 import load_cifar10
from .embedded import load_digits, load_digits28, load_mnist1d
from .mnist import load_mnist
from .tinyimagenet import PAPER_TINY_CLASSES, load_tinyimagenet

DATASETS = ("digits", "digits28", "mnist1d", "mnist", "cifar10", "tinyimagenet")
# input channels and classes of each data set, known before it is loaded: a cell's model is complete when the
# experiment is resolved (Tiny-ImageNet's classes are its tiny_classes)
SHAPES = {"digits": (1, 10), "digits28": (1, 10), "mnist1d": (1, 10), "mnist": (1, 10), "cifar10": (3, 10),
          "tinyimagenet": (3, None)}
# the paper augments the colour data sets only
AUGMENTED = {"cifar10", "tinyimagenet"}


@dataclass
class Data:
    """A loaded data set: train/test splits, the number of classes and input channels, and its augmentation."""

    name: str
    train: TensorDataset
    test: TensorDataset
    n_classes: int
    channels: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None


def model_io(name: str, tiny_classes: int = PAPER_TINY_CLASSES) -> tuple[int, int]:
    """The input channels and classes of data set ``name``: the ``d_input`` and ``n_classes`` of its models.

    Example:
        >>> model_io("cifar10")
        (3, 10)
    """
    channels, classes = SHAPES[name]
    return channels, tiny_classes if classes is None else classes


def check_model_io(data: Data, d_input: int, n_classes: int) -> None:
    """Refuse a loaded data set whose inputs or labels do not fit the model resolved for it."""
    if data.channels != d_input or data.n_classes > n_classes:
        raise DataError(f"the {data.name} files hold {data.channels}-channel inputs with labels up to "
                        f"{data.n_classes - 1}, but its models take {d_input} channels and {n_classes} classes: "
                        "the files are not the standard ones of that data set; replace them")


def _download(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataError("--download needs torchvision: pip install torchvision (or, in a clone of the repository, "
                        "pip install './packages/cli[download]')") from exc
    makers = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}
    if name not in makers:
        raise DataError(f"--download supports {', '.join(makers)}; fetch {name} by hand into {root}")
    try:
        for train in (True, False):
            makers[name](str(root), train=train, download=True)
    except Exception as exc:  # torchvision raises URLError, RuntimeError, ... depending on the failure
        raise DataError(f"downloading {name} into {root} failed ({exc.__class__.__name__}: {exc})") from exc


def _subset(x: torch.Tensor, y: torch.Tensor, size: int | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None:
        return x, y
    if size > len(x):
        raise ConfigError(f"{split}_size={size} but the {split} split has only {len(x)} examples; lower it")
    return x[:size], y[:size]


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    train_size: int | None = None,
    test_size: int | None = None,
    download: bool = False,
    tiny_classes: int = PAPER_TINY_CLASSES,
    augment: bool | None = None,
    seed: int = 0,
) -> Data:
    """Load a data set by name.

    Args:
        name: one of ``DATASETS``.
        data_dir: folder with the data set's standard files (not used by digits / digits28 / mnist1d).
        train_size, test_size: keep the first this many examples of each split (a fixed subset).
        download: fetch MNIST / CIFAR-10 with torchvision first.
        tiny_classes: Tiny-ImageNet classes to keep (the first ones in ``wnids.txt``).
        augment: RandomCrop(pad 4) + flip during training; ``None`` = as the paper (CIFAR-10 and Tiny-ImageNet).
        seed: generator seed of MNIST-1D.
    """
    root = Path(data_dir)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if download:
        _download(name, root)
    if name == "digits":
        parts = load_digits()
    elif name == "digits28":
        parts = load_digits28()
    elif name == "mnist1d":
        parts = load_mnist1d(seed)
    elif name == "mnist":
        parts = load_mnist(root)
    elif name == "cifar10":
        parts = load_cifar10(root)
    else:
        parts = load_tinyimagenet(root, tiny_classes)
    x_tr, y_tr = _subset(parts[0], parts[1], train_size, "train")
    x_te, y_te = _subset(parts[2], parts[3], test_size, "test")
    n_classes = int(max(parts[1].max(), parts[3].max() if len(parts[3]) else 0)) + 1
    channels = x_tr.shape[1] if x_tr.dim() == 4 else x_tr.shape[-1]
    use_augment = name in AUGMENTED if augment is None else augment
    if use_augment and x_tr.dim() != 4:
        raise ConfigError(f"augment=true needs images; {name} holds sequences. Set augment = false")
    return Data(name, TensorDataset(x_tr, y_tr), TensorDataset(x_te, y_te), n_classes, channels,
                CropFlip(4) if use_augment else None)


__all__ = ["Data", "DATASETS", "SHAPES", "PAPER_TINY_CLASSES", "model_io", "check_model_io", "load_dataset",
           "CropFlip", "load_digits", "load_digits28", "load_mnist1d", "load_mnist",
           "load_cifar10", "load_tinyimagenet"]
