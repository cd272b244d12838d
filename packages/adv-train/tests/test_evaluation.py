"""evaluate(): coherent numbers equal to a by-hand computation, every kind of data source,
progress reporting, the gradient-masking warnings, and clear errors."""
import copy
import functools
import json

import pytest
import torch
from advssm.adv_train.attacks import FGSM, PGD, AutoAttack, Square
from advssm.adv_train.evaluation import EvalResult, evaluate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPS = 0.1


def data(n: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 3, 3, generator=g)
    return x, (x.flatten(1)[:, :4].sum(1) > 2).long() + 2 * (x[:, 0, 0, 0] > 0.5).long()


def fitted_model():
    """A fresh copy of one small classifier, trained once per test session."""
    return copy.deepcopy(_fitted_model())


@functools.cache
def _fitted_model():
    torch.manual_seed(0)
    x, y = data(300, seed=1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def deterministic_attacks(model):
    return {"fgsm": FGSM(model, EPS), "pgd": PGD(model, EPS, alpha=EPS / 4, steps=5, random_start=False)}


def test_numbers_match_a_by_hand_computation():
    model = fitted_model()
    x, y = data()
    result = evaluate(model, (x, y), deterministic_attacks(model))
    model.eval()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    still = {}
    for name, attack in deterministic_attacks(model).items():
        still[name] = correct.clone()
        still[name][correct] = model(attack(x[correct], y[correct])).argmax(1) == y[correct]
    assert result.n == 60
    assert result.clean_acc == int(correct.sum()) / 60
    assert result.robust_acc == {k: int(v.sum()) / 60 for k, v in still.items()}
    assert result.worst_acc == int((still["fgsm"] & still["pgd"]).sum()) / 60
    assert result.worst_acc <= min(result.robust_acc.values()) <= max(result.robust_acc.values()) <= result.clean_acc
    assert 0 < result.worst_acc < result.clean_acc, "the test needs an attack that breaks some but not all"
    assert result.warnings == []


@pytest.mark.parametrize("wrap", [
    lambda x, y: TensorDataset(x, y),
    lambda x, y: DataLoader(TensorDataset(x, y), batch_size=7),
    lambda x, y: (x, y),
], ids=["dataset", "dataloader", "tuple"])
def test_every_data_source_gives_the_same_result(wrap):
    model = fitted_model()
    x, y = data()
    reference = evaluate(model, (x, y), deterministic_attacks(model), batch_size=13)
    result = evaluate(model, wrap(x, y), list(deterministic_attacks(model).values()), batch_size=13)
    assert result.n == reference.n and result.clean_acc == reference.clean_acc
    assert list(result.robust_acc.values()) == list(reference.robust_acc.values())
    assert list(result.robust_acc) == ["FGSM", "PGD"], "a list of attacks is named by class"


def test_n_examples_progress_and_mode():
    model = fitted_model()
    model.train()
    seen = []
    result = evaluate(model, TensorDataset(*data()), {"pgd": PGD(model, EPS, alpha=0.03, seed=0)}, n_examples=25,
                      batch_size=10, progress=seen.append)
    assert result.n == 25
    assert [s["done"] for s in seen if s["stage"] == "pgd"] == [10, 20, 25]
    assert {s["stage"] for s in seen} == {"clean", "pgd"} and all(s["total"] == 25 for s in seen)
    assert model.training, "evaluate restores the model's mode"
    assert json.loads(json.dumps(result.to_dict()))["robust_acc"]["pgd"] == result.robust_acc["pgd"]


def test_prints_nothing_without_progress(capsys):
    model = fitted_model()
    evaluate(model, data(), [FGSM(model, EPS)])
    assert capsys.readouterr() == ("", "")


def test_progress_true_shows_each_stage_on_stderr(capsys):
    model = fitted_model()
    evaluate(model, data(), {"fgsm": FGSM(model, EPS)}, batch_size=25, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"evaluate: {stage} {done}/60" for done in (25, 50, 60) for stage in ("clean", "fgsm")]


def test_nothing_left_to_attack_skips_the_attack():
    model = fitted_model()
    x, y = data()
    with torch.no_grad():
        wrong = (model.eval()(x).argmax(1) + 1) % 4

    class Exploding(FGSM):
        def perturb(self, *args):
            raise AssertionError("must not be called when every example is already misclassified")

    result = evaluate(model, (x, wrong), {"x": Exploding(model, EPS)})
    assert result.clean_acc == result.robust_acc["x"] == result.worst_acc == 0


class Softmaxed(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class AlwaysDropout(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return nn.functional.dropout(self.model(x), 0.5, training=True)


class Quantised(nn.Module):
    """Rounds its input to 4 levels first: zero input gradients, while a black-box attack still works."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


@pytest.mark.parametrize(("wrap", "expected"), [
    (Softmaxed, "probabilities, not logits"),
    (AlwaysDropout, "two forward passes on the same input"),
    (Quantised, "all-zero input gradient"),
])
def test_masking_warnings_fire(wrap, expected):
    masked = wrap(fitted_model())
    result = evaluate(masked, data(), [FGSM(masked, EPS)])
    assert any(expected in w for w in result.warnings), result.warnings
    assert evaluate(masked, data(), [FGSM(masked, EPS)], check_masking=False).warnings == []


@pytest.mark.parametrize("as_autoattack", [False, True])
def test_square_beating_white_box_attacks_is_flagged(as_autoattack):
    masked = Quantised(fitted_model())
    pgd = PGD(masked, 0.2, alpha=0.05, steps=5, random_start=False)
    square = Square(masked, 0.2, n_queries=100, seed=0)
    attacks = [AutoAttack(masked, eps=0.2, version="custom", attacks=[pgd, square])] if as_autoattack else [pgd, square]
    result = evaluate(masked, data(), attacks)
    assert any("Square (black-box) broke" in w for w in result.warnings), result.warnings


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"data": [1, 2, 3]}, TypeError, "data must be a Dataset, a DataLoader or an"),
    ({"attacks": {"a": "pgd"}}, TypeError, "not an advssm Attack"),
    ({"attacks": "pgd"}, TypeError, "attacks must be a dict"),
    ({"n_examples": 0}, ValueError, "n_examples must be a positive int"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
    ({"data": (torch.rand(3, 2), torch.zeros(2, dtype=torch.long))}, ValueError, "disagree on the number"),
    ({"data": (torch.rand(0, 18), torch.zeros(0, dtype=torch.long))}, ValueError, "no examples"),
])
def test_bad_arguments(kwargs, error, match):
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 4))
    args = {"data": data(), "attacks": [FGSM(model, EPS)], **kwargs}
    with pytest.raises(error, match=match):
        evaluate(model, **args)


def test_result_is_a_dataclass_with_the_documented_fields():
    assert set(EvalResult.__dataclass_fields__) == {"n", "clean_acc", "robust_acc", "worst_acc", "warnings", "seconds",
                                                    "forward_passes", "backward_passes", "attacks"}
