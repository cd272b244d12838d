"""Data loaders on small files written here in each standard format, and the augmentation against a loop."""
import gzip
import pickle

import numpy as np
import pytest
import torch
from advssm.cli.data import CropFlip, load_dataset
from advssm.cli.errors import ConfigError, DataError


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, gz: bool, rng):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 6),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(4),
    }
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz,layout", [(True, "flat"), (False, "torchvision")])
def test_mnist_idx(tmp_path, gz, layout):
    rng = np.random.default_rng(1)
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays = _write_mnist(folder, gz, rng)
    data = load_dataset("mnist", tmp_path)
    x, y = data.train.tensors
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    np.testing.assert_allclose(x[:, 0].numpy() * 255, arrays["train-images-idx3-ubyte"], atol=1e-4)
    np.testing.assert_array_equal(y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert data.test.tensors[0].shape == (4, 1, 28, 28) and data.augment is None and data.channels == 1


def test_mnist_missing_names_files_and_place(tmp_path):
    with pytest.raises(DataError, match=r"missing train-images-idx3-ubyte.*MNIST/raw"):
        load_dataset("mnist", tmp_path / "nowhere")


def test_mnist_bad_magic(tmp_path):
    _write_mnist(tmp_path, False, np.random.default_rng(0))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("mnist", tmp_path)


def _write_cifar(root, rng):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, 3)]
        batch = {b"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = batch
    return batches


def test_cifar10_pickle_batches(tmp_path):
    batches = _write_cifar(tmp_path, np.random.default_rng(2))
    data = load_dataset("cifar10", tmp_path, train_size=12)
    x, y = data.train.tensors
    assert x.shape == (12, 3, 32, 32) and data.test.tensors[0].shape == (3, 3, 32, 32)
    first = batches["data_batch_1"][b"data"].reshape(3, 3, 32, 32)
    np.testing.assert_allclose(x[:3].numpy() * 255, first, atol=1e-4)
    assert y[:3].tolist() == [int(v) for v in batches["data_batch_1"][b"labels"]]
    assert isinstance(data.augment, CropFlip)


def test_cifar10_refuses_foreign_pickle(tmp_path):
    _write_cifar(tmp_path, np.random.default_rng(3))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": print}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar10", tmp_path)


def test_tinyimagenet_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n001", "n002", "n003"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(4)
    lines = []
    for k, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(root / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines))
    data = load_dataset("tinyimagenet", tmp_path, tiny_classes=2)
    x, y = data.train.tensors
    assert x.shape == (4, 3, 64, 64) and y.tolist() == [0, 0, 1, 1] and data.n_classes == 2
    assert data.test.tensors[0].shape == (2, 3, 64, 64) and data.test.tensors[1].tolist() == [0, 1]
    assert 0 <= x.min() and x.max() <= 1


def test_tinyimagenet_missing(tmp_path):
    with pytest.raises(DataError, match="wnids.txt.*Unzip tiny-imagenet-200.zip"):
        load_dataset("tinyimagenet", tmp_path)


def test_digits_fixed_split_and_range():
    a, b = load_dataset("digits"), load_dataset("digits", train_size=100, test_size=50)
    x, y = a.train.tensors
    assert x.shape[1:] == (1, 8, 8) and 0 <= x.min() and x.max() == 1 and a.n_classes == 10
    assert len(a.train) + len(a.test) == 1797
    assert torch.equal(b.train.tensors[0], x[:100]) and len(b.test) == 50


def test_subset_too_large_and_unknown():
    with pytest.raises(ConfigError, match="train_size=5000.*only"):
        load_dataset("digits", train_size=5000)
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_mnist1d_missing_names_extra():
    try:
        import mnist1d  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"pip install mnist1d \(or, in a clone of the repository"):
            load_dataset("mnist1d")
    else:
        data = load_dataset("mnist1d", test_size=10)
        assert data.train.tensors[0].dim() == 3 and 0 <= data.train.tensors[0].min()


def test_cropflip_matches_loop_reference():
    x = torch.rand(5, 3, 6, 7, dtype=torch.float64)
    aug = CropFlip(padding=2)
    out = aug(x, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    offsets = torch.randint(0, 5, (2, 5), generator=gen)
    flips = torch.rand(5, generator=gen) < 0.5
    for b in range(5):
        padded = torch.zeros(3, 10, 11, dtype=torch.float64)
        padded[:, 2:8, 2:9] = x[b]
        crop = padded[:, offsets[0, b]:offsets[0, b] + 6, offsets[1, b]:offsets[1, b] + 7]
        expected = crop.flip(-1) if flips[b] else crop
        assert torch.equal(out[b], expected)
    assert not torch.equal(aug(x, torch.Generator().manual_seed(8)), out)


def _fake_torchvision(monkeypatch, mnist_class):
    """Install a stand-in ``torchvision.datasets`` whose MNIST is ``mnist_class`` (no network in tests)."""
    import sys
    import types

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST, datasets.CIFAR10 = mnist_class, mnist_class
    package = types.ModuleType("torchvision")
    package.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_download_mnist_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:  # writes the files where torchvision puts them: ROOT/MNIST/raw
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            _write_mnist(tmp_path / "MNIST" / "raw", True, np.random.default_rng(0))

    _fake_torchvision(monkeypatch, FakeMNIST)
    data = load_dataset("mnist", tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert data.train.tensors[0].shape == (6, 1, 28, 28)


def test_download_errors(tmp_path, monkeypatch):
    import sys

    class Offline:
        def __init__(self, root, train, download):
            raise OSError("network is unreachable")

    _fake_torchvision(monkeypatch, Offline)
    with pytest.raises(DataError, match="downloading mnist into .* failed.*network is unreachable"):
        load_dataset("mnist", tmp_path, download=True)
    with pytest.raises(DataError, match="--download supports mnist, cifar10; fetch tinyimagenet by hand"):
        load_dataset("tinyimagenet", tmp_path, download=True)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not installed
    with pytest.raises(DataError, match=r"--download needs torchvision: pip install torchvision \(or, in a clone"):
        load_dataset("cifar10", tmp_path, download=True)
