"""TrainConfig: the paper's defaults, per-dataset presets, JSON round trip and one clear error per bad field."""
import dataclasses
import json
import math

import pytest
import torch
from advssm.adv_train.attacks import ATTACK_NAMES
from advssm.adv_train.config import METHOD_NAMES, TrainConfig, decide_device, decide_select_by


def test_defaults_follow_the_paper_protocol():
    c = TrainConfig()
    assert (c.method, c.epochs, c.lr, c.weight_decay, c.batch_size, c.scheduler) == (
        "standard", 100, 1e-3, 2e-4, 256, "cosine")
    assert (c.eps, c.alpha, c.attack_steps, c.seed, c.aa_every, c.aa_n) == (0.3, 0.04, 10, 5, 4, 2000)
    assert (c.free_replays, c.yopo_m, c.yopo_n, c.fast_at_alpha, c.jacobian_weight) == (4, 5, 3, 1.25, 0.0)


@pytest.mark.parametrize("dataset,eps,alpha,epochs,beta", [
    ("mnist", 0.3, 0.04, 100, 1.0), ("cifar10", 8 / 255, 2 / 255, 180, 6.0),
    ("tinyimagenet", 8 / 255, 2 / 255, 180, 6.0)])
def test_for_dataset(dataset, eps, alpha, epochs, beta):
    c = TrainConfig.for_dataset(dataset, method="trades", epochs=3)
    assert math.isclose(c.eps, eps) and math.isclose(c.alpha, alpha) and c.trades_beta == beta
    assert c.epochs == 3 and c.method == "trades"
    assert TrainConfig.for_dataset(dataset).epochs == epochs


def test_for_dataset_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*mnist"):
        TrainConfig.for_dataset("svhn")


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_json_round_trip(method):
    c = TrainConfig(method=method, eval_n=100, jacobian_weight=0.5, device="auto", aa_version="custom",
                    aa_attacks=["apgd-ce", "square"])
    text = c.to_json()
    assert json.loads(text) == c.to_dict()
    assert TrainConfig.from_json(text) == c
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown TrainConfig keys: bogus, lr_max"):
        TrainConfig.from_dict({"lr_max": 1, "bogus": 2, "lr": 0.1})
    with pytest.raises(ValueError, match="must be an object"):
        TrainConfig.from_json("[1, 2]")


@pytest.mark.parametrize("field,value,message", [
    ("lr", -1, "TrainConfig.lr must be > 0, got -1"),
    ("method", "sgd", "TrainConfig.method must be one of standard, pgd-at"),
    ("epochs", 0, "TrainConfig.epochs must be >= 1, got 0"),
    ("batch_size", 0, "TrainConfig.batch_size must be >= 1"),
    ("eps", 1.5, r"TrainConfig.eps must be in \(0, 1\]"),
    ("eps", 0.0, r"TrainConfig.eps must be in \(0, 1\]"),
    ("alpha", 0.0, "TrainConfig.alpha must be > 0"),
    ("weight_decay", -0.1, "TrainConfig.weight_decay must be >= 0"),
    ("scheduler", "step", "TrainConfig.scheduler must be 'cosine' or 'none'"),
    ("eval_n", 0, "TrainConfig.eval_n must be None"),
    ("aa_every", -1, "TrainConfig.aa_every must be >= 0"),
    ("aa_version", "fast", "TrainConfig.aa_version must be 'standard', 'rand' or 'custom', got 'fast'"),
    ("aa_version", "random", "TrainConfig.aa_version must be 'standard', 'rand' or 'custom', got 'random'"),
    ("aa_version", "custom", "TrainConfig.aa_attacks must be a non-empty list of attack names"),
    ("aa_attacks", ["apgd-ce"], "TrainConfig.aa_attacks must be None when aa_version is 'standard'"),
    ("device", "tpu", "TrainConfig.device must be"),
    ("trades_beta", -1.0, "TrainConfig.trades_beta must be >= 0"),
    ("jacobian_projections", 0, "TrainConfig.jacobian_projections must be >= 1"),
    ("yopo_n", 0, "TrainConfig.yopo_n must be >= 1"),
])
def test_bad_values_get_one_clear_message(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field,value", [("epochs", 2.5), ("seed", True), ("lr", "0.1"), ("eps", float("nan"))])
def test_bad_types(field, value):
    with pytest.raises(TypeError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**{field: value})


# One value per field that validation must reject, and the error it must raise: every field is listed
# (a test below fails when a field is added without a case here).
BAD_VALUE_PER_FIELD = {
    "method": ("pgd", ValueError), "epochs": (0, ValueError), "lr": (0.0, ValueError),
    "weight_decay": (-1e-4, ValueError), "batch_size": (-5, ValueError), "scheduler": ("linear", ValueError),
    "eps": (2.0, ValueError), "alpha": (-0.01, ValueError), "attack_steps": (-1, ValueError),
    "eps_warmup_epochs": (-1, ValueError),
    "trades_beta": (float("inf"), TypeError), "mart_beta": (-6.0, ValueError), "free_replays": (0, ValueError),
    "yopo_m": (0, ValueError), "yopo_n": (1.5, TypeError), "fast_at_alpha": (0.0, ValueError),
    "noise_sigma": (0.0, ValueError),
    "jacobian_weight": (-0.1, ValueError), "jacobian_projections": (0, ValueError), "precision": ("half", ValueError),
    "eval_pgd_steps": (0, ValueError), "eval_n": (-3, ValueError), "aa_every": (-2, ValueError),
    "aa_n": (0, ValueError), "aa_version": ("plus", ValueError), "aa_attacks": (["apgd-ce"], ValueError),
    "seed": (-1, ValueError), "device": ("gpu", ValueError), "num_workers": (-1, ValueError),
    "select_on": ("train", ValueError), "select_by": ("aa", ValueError), "val_n": (0, ValueError),
}


def test_every_field_has_a_rejected_value():
    assert set(BAD_VALUE_PER_FIELD) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("field", sorted(BAD_VALUE_PER_FIELD))
def test_every_field_is_validated_with_a_message_naming_it(field):
    value, error = BAD_VALUE_PER_FIELD[field]
    with pytest.raises(error, match=f"TrainConfig.{field} must be"):
        TrainConfig(**{field: value})


def test_unknown_autoattack_names_fail_before_training():
    with pytest.raises(ValueError, match="TrainConfig.aa_attacks must be a list of names from apgd-ce.*unknown: apgd"):
        TrainConfig(aa_version="custom", aa_attacks=["apgd-ce", "apgd"])
    assert TrainConfig(aa_version="custom", aa_attacks=list(ATTACK_NAMES)).aa_attacks == list(ATTACK_NAMES)


def test_rand_autoattack_is_a_version_that_fixes_its_attacks():
    from advssm.adv_train.attacks.autoattack import VERSIONS
    from advssm.adv_train.config import AA_VERSIONS

    assert set(AA_VERSIONS) == set(VERSIONS)  # every version AutoAttack has, and no other
    c = TrainConfig(aa_version="rand")
    assert c.aa_version == "rand" and c.aa_attacks is None
    assert TrainConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match=r"TrainConfig.aa_attacks must be None when aa_version is 'rand' "
                                         r"\(set aa_version='custom' to choose attacks\), got \['apgd-ce'\]"):
        TrainConfig(aa_version="rand", aa_attacks=["apgd-ce"])
    with pytest.raises(ValueError, match="TrainConfig.aa_version must be 'standard', 'rand' or 'custom'"):
        TrainConfig(aa_version=["rand"])


def test_attack_methods_need_attack_steps():
    with pytest.raises(ValueError, match="attack_steps must be >= 1 for method 'pgd-at'"):
        TrainConfig(method="pgd-at", attack_steps=0)
    assert TrainConfig(method="standard", attack_steps=0).attack_steps == 0


@pytest.mark.parametrize("select_by, method, decided", [
    ("auto", "standard", "clean"), ("auto", "pgd-at", "pgd"), ("auto", "trades", "pgd"),
    ("clean", "pgd-at", "clean"), ("pgd", "standard", "pgd"),
])
def test_select_by_auto_is_decided_in_one_place(select_by, method, decided):
    assert decide_select_by(select_by, method) == decided


def test_device_auto_is_decided_in_one_place():
    assert decide_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert decide_device("cuda:1") == "cuda:1" and decide_device("cpu") == "cpu"
