"""One schema per library (issue 19, item 1): the spec's ``[model]`` is a ``ModelConfig`` and its ``[train]`` a
``TrainConfig``, checked by the libraries themselves, not by a generated copy of their fields. The data set decides
the model's channels and classes when the experiment is resolved, ``[train] init_from`` is the CLI's own setting,
and files of the earlier layout (cells without those, ``init_from`` inside ``train``) still read."""
import dataclasses
import sys

import pytest
import torch
from advssm.adv_train.config import TrainConfig
from advssm.cli.data import Data, check_model_io
from advssm.cli.errors import ConfigError, DataError
from advssm.cli.experiment.cell_runner import build_cell_model
from advssm.cli.experiment.run_folder import same_experiment
from advssm.cli.experiment.spec import PRESETS, CellSpec, ExperimentSpec, resolve_experiment, validate_cell
from advssm.ssm_layers import ModelConfig
from advssm.ssm_layers import preset as model_preset
from advssm.ssm_layers.model import PRESETS as MODEL_PRESETS
from advssm.ssm_layers.model import VISION_PRESETS
from torch.utils.data import TensorDataset

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_the_spec_holds_the_libraries_own_configs():
    spec = resolve_experiment({})
    assert type(spec.model) is ModelConfig and type(spec.train) is TrainConfig
    for field, config in (("model", ModelConfig), ("train", TrainConfig)):
        assert CellSpec.model_fields[field].annotation is config
        assert ExperimentSpec.model_fields[field].annotation is config
    for cell in spec.cells():
        assert type(cell.model) is ModelConfig and type(cell.train) is TrainConfig
        assert build_cell_model(cell).config == cell.model  # what the cell builds is its spec's model, whole
        assert cell.train.select_by in ("clean", "pgd")  # "auto" decided per cell


@pytest.mark.parametrize("section, key, value", [
    ("model", "dropout", "0.1"),  # a string is not coerced to a number
    ("model", "prenorm", 1),  # nor an int to a bool
    ("model", "transform_layers", ["0"]),
    ("model", "layer_options", "expand=2"),
    ("model", "d_state", 0),
    ("train", "lr", "0.1"),
    ("train", "epochs", 2.5),
    ("train", "select_on", "train"),
    ("train", "eps", 2.0),
])
def test_a_bad_value_gets_the_library_s_own_message(section, key, value):
    config = {"model": ModelConfig, "train": TrainConfig}[section]
    with pytest.raises((ValueError, TypeError)) as library:
        config(**{key: value})
    with pytest.raises(ConfigError) as cli:
        resolve_experiment({}, {f"{section}.{key}": value})
    assert str(cli.value) == "invalid setting: " + str(library.value).replace(f"{config.__name__}.", f"{section}.")


def test_the_data_set_decides_the_model_s_channels_and_classes():
    spec = resolve_experiment({"data": {"tiny_classes": 20}, "grid": {"dataset": ["digits", "cifar10", "tinyimagenet"],
                                                                      "method": ["standard"]}})
    assert {c.data.dataset: (c.model.d_input, c.model.n_classes) for c in spec.cells()} == {
        "digits": (1, 10), "cifar10": (3, 10), "tinyimagenet": (3, 20)}
    for given in ({"model": {"n_classes": 5}}, {"model": {"d_input": 3}}):
        with pytest.raises(ConfigError, match="is set by the data set; remove it"):
            resolve_experiment(given)


def test_files_that_do_not_fit_the_resolved_model_are_refused():
    data = Data("cifar10", TensorDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 11])), TensorDataset(
        torch.zeros(1, 1, 4, 4), torch.tensor([0])), n_classes=12, channels=1)
    with pytest.raises(DataError, match="1-channel inputs with labels up to 11, but its models take 3 channels"):
        check_model_io(data, 3, 10)
    check_model_io(data, 1, 12)


def test_init_from_keeps_its_toml_key_and_is_the_cli_s_own_setting():
    spec = resolve_experiment({"train": {"init_from": "warm.safetensors"}})
    assert spec.init_from == "warm.safetensors" and all(c.init_from == "warm.safetensors" for c in spec.cells())
    assert not hasattr(spec.train, "init_from")
    text = spec.to_toml()
    assert tomllib.loads(text)["train"]["init_from"] == "warm.safetensors"
    assert same_experiment(resolve_experiment(tomllib.loads(text)), spec)
    assert resolve_experiment({}, {"train.init_from": "none"}).init_from is None


@pytest.mark.parametrize("key", ["paper_d_state", "init_from"])
def test_the_toml_s_top_level_keys_are_unchanged(key):
    """The spec's own fields (paper_d_state, init_from) are not TOML keys: they are written as d_state = "paper"
    and [train] init_from."""
    with pytest.raises(ConfigError, match=f"unknown key '{key}'") as info:
        resolve_experiment({key: True})
    if key == "init_from":
        assert str(info.value) == "unknown key 'init_from'; it belongs in [train] (train.init_from)"


def test_paper_d_state_round_trips_through_the_toml():
    spec = resolve_experiment({"preset": "paper-cifar10", "grid": {"layer": ["s4", "s6", "mega"]}})
    assert spec.paper_d_state and spec.to_dict()["model"]["d_state"] == "paper"
    again = resolve_experiment(tomllib.loads(spec.to_toml()))
    assert same_experiment(again, spec)
    assert {c.model.layer: c.model.d_state for c in again.cells()} == {"s4": 64, "s6": 16, "mega": 16}


def test_specs_of_the_earlier_layout_still_read():
    """cell.json, checkpoints and spec.json written before this layout: no d_input / n_classes in the cell's model,
    init_from inside train, d_state = "paper" in the experiment's model."""
    spec = resolve_experiment({"preset": "paper-cifar10", "train": {"init_from": "w.safetensors"}},
                              {"grid.layer": ["s6"], "train.epochs": 1})
    cell = spec.cells()[0]
    old = cell.model_dump(mode="json")
    old["train"]["init_from"] = old.pop("init_from")
    for key in ("d_input", "n_classes"):
        old["model"].pop(key)
    assert validate_cell(old, "old/cell.json") == cell
    old_spec = spec.model_dump(mode="json")
    old_spec["train"]["init_from"] = old_spec.pop("init_from")
    old_spec["model"]["d_state"] = "paper"
    del old_spec["paper_d_state"]
    assert same_experiment(ExperimentSpec.model_validate(old_spec), spec)


def test_the_libraries_configs_are_frozen_and_a_change_is_checked_again():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.eps = 5.0
    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\]"):
        dataclasses.replace(config, eps=5.0)
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        dataclasses.replace(ModelConfig(), d_state=0)


def test_the_presets_are_the_libraries_own():
    """A CLI preset names a model preset (ssm-layers), a protocol (adv-train) and a data set; its cells hold exactly
    those values, the data set's channels and classes included (Tiny-ImageNet's 50 classes agree with the model
    preset's head)."""
    assert set(PRESETS) == {f"paper-{name}" for name in MODEL_PRESETS} | set(VISION_PRESETS)
    for name, parts in PRESETS.items():
        cell = resolve_experiment({"preset": name}, {"grid.method": ["standard"]}).cells()[0]
        assert cell.model == model_preset(parts.model), name
        protocol = TrainConfig.for_dataset(parts.dataset)
        assert cell.train == dataclasses.replace(protocol, select_by="clean"), name


def test_specs_are_equal_by_their_settings_not_by_the_cells_they_cached():
    asked = resolve_experiment({})  # resolving checks the cells, which the spec then caches
    asked.cells()
    fresh = ExperimentSpec.model_validate(asked.model_dump())  # as spec.json is read: no cell asked for yet
    assert asked == fresh and same_experiment(asked, fresh)
    assert asked != resolve_experiment({}, {"train.epochs": 2}) and asked != "a spec"
    with pytest.raises(TypeError):
        hash(asked)
