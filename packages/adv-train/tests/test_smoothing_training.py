"""The "gaussian" training method: its loss is the cross-entropy at x + sigma * noise from the run's generator, and
a model trained with it through the Trainer is one that smoothing certifies."""
import torch
import torch.nn.functional as F
from advssm.adv_train import TrainConfig, Trainer
from advssm.adv_train.certify import Smooth
from advssm.adv_train.methods import StepContext, get_method
from torch import nn
from torch.utils.data import TensorDataset


def test_loss_is_the_cross_entropy_of_the_noised_batch():
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x, y = torch.rand(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    config = TrainConfig(method="gaussian", noise_sigma=0.7)
    ctx = StepContext(model, {}, config, torch.Generator().manual_seed(11))
    loss, stats = get_method("gaussian", config).loss(ctx, x, y)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    noisy = model(x + 0.7 * noise)  # not clipped to [0, 1], as smoothing will not clip it either
    torch.testing.assert_close(loss, F.cross_entropy(noisy, y), rtol=1e-12, atol=1e-12)
    assert stats["adv_correct"] == float((noisy.argmax(1) == y).sum()) and stats["n"] == 4


def test_noise_sigma_is_checked():
    for bad in (0.0, -0.1):
        try:
            TrainConfig(method="gaussian", noise_sigma=bad)
        except ValueError as exc:
            assert "noise_sigma" in str(exc) and "> 0" in str(exc)
        else:
            raise AssertionError(f"noise_sigma={bad} was accepted")


def blobs(seed, n, d=16, k=4):
    g = torch.Generator().manual_seed(seed)
    centers = 0.25 + 0.5 * torch.rand(k, d, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, k, (n,), generator=g)
    return (centers[y] + 0.12 * torch.randn(n, d, generator=g)).clamp(0, 1), y


def test_a_gaussian_trained_model_is_certified_by_smoothing(tmp_path):
    torch.manual_seed(0)
    train, test = TensorDataset(*blobs(1, 400)), TensorDataset(*blobs(2, 40))
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    config = TrainConfig(method="gaussian", noise_sigma=0.25, epochs=8, batch_size=50, lr=1e-2, aa_every=0,
                         eval_pgd_steps=1, eps=0.05, alpha=0.05, seed=1)
    trainer = Trainer(model, train, test, config, out_dir=tmp_path, callbacks=[object()])
    trainer.fit()
    first, last = trainer.history[0], trainer.history[-1]
    # the noised blobs overlap: about 77 % is what the noisy training batches allow (measured over 20 epochs)
    assert last["train_loss"] < 0.6 * first["train_loss"] and last["train_adv_acc"] > 0.7
    x, y = test.tensors
    cert = Smooth(model, sigma=0.25, seed=0, batch_size=1000).certify(x, n0=50, n=1000, alpha=0.001)
    certified = (cert.prediction == y)
    assert certified.float().mean() > 0.8 and cert.radius[certified].median() > 0.1
