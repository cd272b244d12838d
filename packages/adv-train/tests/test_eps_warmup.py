"""The eps warm-up (TrainConfig.eps_warmup_epochs): one ramp in StepContext that every adversarial method obeys.

A method trained in epoch e of a k-epoch warm-up must update the weights exactly as the same method does with
``eps * min(1, e / k)`` and ``alpha`` scaled by the same factor and no warm-up; the Trainer hands the epoch in.
"""
import copy

import pytest
import torch
from advssm.adv_train import TrainConfig, Trainer
from advssm.adv_train.attacks import PGD
from advssm.adv_train.methods import METHODS, StepContext, get_method, warmup_scale
from torch import nn
from torch.utils.data import TensorDataset

ADVERSARIAL = sorted(set(METHODS) - {"standard", "gaussian"})  # gaussian trains on noise and reads no eps
EPS, ALPHA = 0.2, 0.05


class TwoLinear(nn.Module):
    """A small model with the first-layer protocol, so YOPO runs on it too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.first_layer, self.head = nn.Linear(3, 4).double(), nn.Linear(4, 3).double()

    def forward(self, x):
        return self.head(torch.tanh(self.first_layer(x)))


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(n, 3, generator=g, dtype=torch.float64), torch.randint(3, (n,), generator=g)


def step(method_name, epoch, **cfg):
    """The weights after one train_step of ``method_name`` in ``epoch`` on a fresh model and a fixed batch."""
    model = TwoLinear()
    config = TrainConfig(method=method_name, epochs=8, attack_steps=3, **cfg)
    method = get_method(method_name, config)
    opts = {k: torch.optim.SGD(ps, lr=0.5) for k, ps in method.param_groups(model).items() if ps}
    ctx = StepContext(model, opts, config, torch.Generator().manual_seed(3), epoch=epoch)
    method.train_step(ctx, *batch())
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_warmup_scale_is_the_documented_ramp():
    assert [warmup_scale(e, 4) for e in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_scale(1, 1) == 1.0 and warmup_scale(0, 0) == 1.0 and warmup_scale(3, 0) == 1.0
    with pytest.raises(ValueError, match="counts epochs from 1, got epoch 0"):
        warmup_scale(0, 2)


def test_context_scales_eps_and_alpha_together():
    config = TrainConfig(method="pgd-at", epochs=10, eps=EPS, alpha=ALPHA, eps_warmup_epochs=4)
    ctx = StepContext(nn.Linear(1, 1), {}, config, torch.Generator(), epoch=1)
    assert (ctx.eps, ctx.alpha) == pytest.approx((EPS / 4, ALPHA / 4))
    ctx.epoch = 3
    assert (ctx.eps, ctx.alpha) == pytest.approx((0.75 * EPS, 0.75 * ALPHA))
    ctx.epoch = 7
    assert (ctx.eps, ctx.alpha) == (EPS, ALPHA)
    assert config.eps == EPS and config.alpha == ALPHA  # the config (and so evaluation) keeps the full budget


@pytest.mark.parametrize("method_name", ADVERSARIAL)
@pytest.mark.parametrize("epoch", [1, 3])
def test_every_method_trains_at_the_ramped_eps(method_name, epoch):
    k = 4
    ramped = step(method_name, epoch, eps=EPS, alpha=ALPHA, eps_warmup_epochs=k)
    f = epoch / k
    torch.testing.assert_close(ramped, step(method_name, epoch, eps=EPS * f, alpha=ALPHA * f), rtol=1e-12, atol=1e-14)
    full = step(method_name, epoch, eps=EPS, alpha=ALPHA)
    assert not torch.allclose(ramped, full, rtol=0, atol=1e-9), "no effect: the method reads eps elsewhere"


@pytest.mark.parametrize("method_name", ADVERSARIAL)
def test_after_the_ramp_the_full_eps(method_name):
    torch.testing.assert_close(step(method_name, 5, eps=EPS, alpha=ALPHA, eps_warmup_epochs=4),
                               step(method_name, 5, eps=EPS, alpha=ALPHA), rtol=0, atol=0)


@pytest.mark.parametrize("k,error,message", [(-1, ValueError, r"in 0..epochs=8 .*got -1"),
                                             (9, ValueError, r"in 0..epochs=8 .*got 9"),
                                             (1.5, TypeError, "an int"), (True, TypeError, "an int")])
def test_warmup_is_validated(k, error, message):
    with pytest.raises(error, match=f"TrainConfig.eps_warmup_epochs must be {message}"):
        TrainConfig(epochs=8, eps_warmup_epochs=k)
    assert TrainConfig(epochs=8, eps_warmup_epochs=8).eps_warmup_epochs == 8
    assert TrainConfig.from_json(TrainConfig(epochs=8, eps_warmup_epochs=3).to_json()).eps_warmup_epochs == 3
    assert TrainConfig().eps_warmup_epochs == 0  # the paper's protocol: no warm-up


class Weights:
    """Trainer callback keeping the weights at the end of each epoch."""

    def __init__(self):
        self.per_epoch = []

    def on_epoch_end(self, trainer, epoch, metrics):
        self.per_epoch.append(torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()]))


def fit(init_state, **cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 3, generator=g)
    data = TensorDataset(x, (x.sum(1) > 1.5).long())
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    model.load_state_dict(init_state)  # the init-from workflow: another run's weights before the Trainer
    weights = Weights()
    trainer = Trainer(model, data, data, TrainConfig(method="pgd-at", epochs=2, batch_size=16, lr=0.05, attack_steps=2,
                                                     eval_pgd_steps=3, aa_every=0, **cfg), callbacks=[weights])
    trainer.fit()
    return weights.per_epoch


def test_trainer_hands_the_epoch_to_the_ramp_and_evaluates_at_the_full_eps(monkeypatch):
    torch.manual_seed(0)
    init = copy.deepcopy(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).state_dict())
    half = fit(init, eps=0.1, alpha=0.025)
    full = fit(init, eps=0.2, alpha=0.05)
    built = []  # (steps, eps, alpha) of every PGD the run builds: training attacks take 2 steps, evaluation 3
    original = PGD.__init__

    def spy(self, model, eps, alpha, steps, **kwargs):
        built.append((steps, eps, alpha))
        original(self, model, eps=eps, alpha=alpha, steps=steps, **kwargs)

    monkeypatch.setattr(PGD, "__init__", spy)
    ramped = fit(init, eps=0.2, alpha=0.05, eps_warmup_epochs=2)
    torch.testing.assert_close(ramped[0], half[0], rtol=0, atol=0)  # epoch 1: half the budget
    assert not torch.equal(ramped[1], half[1]) and not torch.equal(ramped[0], full[0])
    training = sorted({b for b in built if b[0] == 2})
    assert training == [(2, pytest.approx(0.1), pytest.approx(0.025)), (2, 0.2, 0.05)]
    assert {b for b in built if b[0] == 3} == {(3, 0.2, 0.05)}  # evaluation: always the full eps
