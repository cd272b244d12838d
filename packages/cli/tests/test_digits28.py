"""digits28: the bundled digits upsampled to 28x28 (784-step sequences); PGD-AT on it gets off the ground with
the eps warm-up or from a standard-trained start (issue 14)."""
import numpy as np
import torch
from advssm.cli.data import DATASETS, load_dataset


def bilinear_28(img8: np.ndarray) -> np.ndarray:
    """Half-pixel-centred bilinear resize 8 -> 28 written out (source coordinate (i + 1/2) 8/28 - 1/2, edges held)."""
    src = np.clip((np.arange(28) + 0.5) * 8 / 28 - 0.5, 0, 7)
    lo = np.floor(src).astype(int)
    hi, w = np.minimum(lo + 1, 7), src - np.floor(src)
    rows = img8[lo] * (1 - w)[:, None] + img8[hi] * w[:, None]
    return rows[:, lo] * (1 - w) + rows[:, hi] * w


def test_digits28_is_the_digits_upsampled_bilinearly():
    assert "digits28" in DATASETS
    small, big = load_dataset("digits"), load_dataset("digits28")
    x8, y8 = small.train.tensors
    x28, y28 = big.train.tensors
    assert x28.shape == (1347, 1, 28, 28) and big.test.tensors[0].shape == (450, 1, 28, 28)
    assert x28.dtype == torch.float32 and 0 <= float(x28.min()) and float(x28.max()) <= 1
    assert torch.equal(y28, y8) and torch.equal(big.test.tensors[1], small.test.tensors[1])  # the same split
    assert big.n_classes == 10 and big.channels == 1 and big.augment is None
    for i in (0, 7, 1000):
        np.testing.assert_allclose(x28[i, 0].numpy(), bilinear_28(x8[i, 0].numpy().astype(np.float64)), atol=1e-6)
    assert load_dataset("digits28", train_size=100, test_size=20).train.tensors[0].shape == (100, 1, 28, 28)
