"""Mixed precision that stays correct (``TrainConfig.precision``), on the CPU under bf16 autocast.

The attacks' invariants hold under a caller's bf16 autocast and their arithmetic sees fp32 logits;
robust accuracies of a trained model under bf16 are within one point of fp32; a bf16 training run
trains, evaluates and records its precision; fp16 is refused on the CPU, naming what to use.
"""
from __future__ import annotations

import json

import pytest
import torch
from advssm.adv_train import TrainConfig, Trainer
from advssm.adv_train.attacks import ATTACK_NAMES, FGSM, PGD, AutoAttack, build_attack, per_example_norm
from advssm.adv_train.evaluation import evaluate
from advssm.adv_train.precision import autocast_forward, check_precision, grad_scaler
from torch import nn
from torch.utils.data import TensorDataset

CPU = torch.device("cpu")
EPS = {"Linf": 0.1, "L2": 0.5}


def attacks(model, norm):
    """FGSM, PGD, every AutoAttack component (few steps) and a reduced AutoAttack."""
    named = {name: build_attack(name, model, norm, EPS[norm], seed=1, steps=5) for name in ATTACK_NAMES}
    named["fgsm"] = FGSM(model, EPS[norm], norm=norm, seed=1)
    named["pgd"] = PGD(model, EPS[norm], alpha=EPS[norm] / 4, steps=5, norm=norm, seed=1)
    named["autoattack"] = AutoAttack(model, norm=norm, eps=EPS[norm], version="custom", seed=1, attacks=[
        build_attack("apgd-ce", model, norm, EPS[norm], seed=1, steps=4),
        build_attack("fab-t", model, norm, EPS[norm], seed=1, steps=3)])
    return named


class Recorder(nn.Module):
    """The model, noting the autocast state and the logits' dtype of every forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        out = self.model(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_every_attack_keeps_its_invariants_under_a_callers_bf16_autocast(trained, norm):
    model, x, y = trained
    recorder = Recorder(model)
    for name, attack in attacks(recorder, norm).items():
        recorder.seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_adv = attack(x[:16], y[:16])
            again = attack(x[:16], y[:16])
        assert recorder.seen and all(on and dtype == torch.bfloat16 for on, dtype in recorder.seen), (
            f"{name}: the model runs under the caller's autocast")
        assert x_adv.dtype == torch.float32 and not x_adv.requires_grad, name
        assert float(per_example_norm(x_adv - x[:16], norm).max()) <= EPS[norm] * (1 + 1e-6), name
        assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1, name
        assert torch.equal(again, x_adv), f"{name}: same seed, same result"
        assert not torch.is_autocast_enabled("cpu")


def test_attack_logits_and_arithmetic_are_fp32_under_autocast(trained):
    model, x, y = trained
    seen = []

    class Probe(PGD):
        def perturb(self, x, y, generator):
            seen.append((self.logits(x).dtype, torch.is_autocast_enabled("cpu")))
            return super().perturb(x, y, generator)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        Probe(model, 0.1, alpha=0.02, steps=2, seed=0)(x[:4], y[:4])
    assert seen == [(torch.float32, False)]  # fp32 logits; the attack's own steps outside autocast


def test_robust_accuracy_under_bf16_within_one_point_of_fp32(trained):
    model, x, y = trained

    def accuracies(precision):
        suite = {"pgd": PGD(model, 0.1, alpha=0.025, steps=10, seed=3),
                 "aa": AutoAttack(model, norm="Linf", eps=0.1, version="custom", seed=3, attacks=[
                     build_attack(n, model, "Linf", 0.1, seed=3, steps=10) for n in ("apgd-ce", "apgd-t", "fab-t")])}
        with autocast_forward(model, precision, CPU):
            result = evaluate(model, (x, y), suite, batch_size=100, seed=3)
        return [result.clean_acc, *result.robust_acc.values()]

    fp32, bf16 = accuracies("fp32"), accuracies("bf16")
    assert 0.1 < fp32[1] < fp32[0], "the attack breaks some examples, not all: the comparison can fail"
    for a, b in zip(fp32, bf16):
        assert abs(a - b) <= 0.01, (fp32, bf16)


def test_autocast_forward_runs_the_forward_in_bf16_and_returns_fp32():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    inner = []
    model[0].register_forward_hook(lambda m, a, out: inner.append(out.dtype))
    with autocast_forward(model, "bf16", CPU):
        out = model(torch.rand(2, 4))
    assert inner == [torch.bfloat16] and out.dtype == torch.float32
    assert model(torch.rand(2, 4)).dtype == torch.float32 and inner[-1] == torch.float32  # hooks gone after
    assert not torch.is_autocast_enabled("cpu")


def test_fp16_is_refused_on_the_cpu_with_what_to_use():
    with pytest.raises(ValueError, match="precision.*'bf16'"):
        TrainConfig(precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="needs a CUDA device.*'bf16'"):
        check_precision("fp16", CPU)
    with pytest.raises(ValueError, match="one of fp32, bf16, fp16"):
        TrainConfig(precision="half")
    assert grad_scaler("bf16", CPU) is None and grad_scaler("fp32", CPU) is None


def test_jacobian_as_a_method_points_to_the_weight():
    for name in ("jr", "jacobian", "Jacobian_Regularisation"):
        with pytest.raises(ValueError, match=r"not a method.*jacobian_weight = W .*--jacobian-weight W"):
            TrainConfig(method=name)


@pytest.mark.parametrize("method", ["pgd-at", "standard"])
def test_a_bf16_run_trains_evaluates_and_records_its_precision(tmp_path, method):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 12, generator=g), torch.randint(0, 3, (96,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    linear_dtypes = []
    model[0].register_forward_hook(lambda m, a, out: linear_dtypes.append(out.dtype))
    cfg = TrainConfig(method=method, epochs=1, batch_size=32, eps=0.1, alpha=0.05, attack_steps=2,
                      eval_pgd_steps=2, aa_every=0, precision="bf16", jacobian_weight=0.01)
    summary = Trainer(model, TensorDataset(x, y), TensorDataset(x[:32], y[:32]), cfg, out_dir=tmp_path).fit()
    assert set(linear_dtypes) == {torch.bfloat16}, "every forward (training and evaluation) ran under autocast"
    assert summary["last"]["pgd_acc"] is not None
    meta = json.loads((tmp_path / "last.pt.json").read_text())
    assert meta["train_config"]["precision"] == "bf16"
    assert torch.load(tmp_path / "train_state.pt", weights_only=True)["config"]["precision"] == "bf16"
    assert model(x[:2]).dtype == torch.float32 and linear_dtypes[-1] == torch.float32  # autocast gone after fit


def test_fp16_loss_scaling_steps_as_unscaled_and_skips_an_overflow():
    """StepContext.step with the fp16 GradScaler (its CPU build here; fp16 itself needs CUDA): the gradients the
    ranks reduce are unscaled, the step equals the unscaled one, and a step whose gradients overflow is skipped
    with the scale lowered."""
    from advssm.adv_train.methods import StepContext

    def run(scaler, loss_scale=1.0):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        seen = []
        ctx = StepContext(model, {"main": torch.optim.SGD(model.parameters(), lr=0.1)}, TrainConfig(),
                          torch.Generator(), sync_grads=lambda ps: seen.append([p.grad.clone() for p in ps]),
                          scaler=scaler)
        ctx.step(model(torch.ones(3, 4)).sum() * loss_scale)
        return model, seen[0]

    plain, plain_grads = run(None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled, scaled_grads = run(scaler)
    for a, b in zip(plain_grads, scaled_grads):
        torch.testing.assert_close(a, b)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b)
    overflow = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    torch.manual_seed(0)
    before = [p.detach().clone() for p in nn.Linear(4, 2).parameters()]
    skipped, _ = run(overflow, loss_scale=3e38)  # finite loss, gradients inf once scaled
    assert all(torch.equal(a, b) for a, b in zip(before, skipped.parameters())), "the overflowing step is skipped"
    assert overflow.get_scale() < 2.0**12
