"""Issue 11 item 1: one typed spec, resolved once into frozen, self-contained cells, every cell validated up front."""
import dataclasses
import json
import pickle

import pytest
from advssm.cli.errors import ConfigError
from advssm.cli.experiment.spec import CellSpec, ExperimentSpec, resolve_experiment
from pydantic import ValidationError


def test_cells_round_trip_through_json_and_pickle():
    spec = resolve_experiment({"preset": "paper-cifar10", "grid": {"layer": ["s6", "s4"], "ads": ["none", "relu"]}})
    cells = spec.cells()
    assert [c.name for c in cells] == ["s6-none", "s6-relu", "s4-none", "s4-relu"]
    for cell in cells:
        assert CellSpec.model_validate_json(cell.model_dump_json()) == cell
        assert pickle.loads(pickle.dumps(cell)) == cell  # what a submitit job receives
        assert isinstance(cell.model.d_state, int)  # "paper" decided per cell
    assert cells[0].model.d_state == 16 and cells[2].model.d_state == 64  # Mamba 16 on CIFAR-10, S4 64
    assert cells[1].ads == "relu" and cells[0].train.eps == pytest.approx(8 / 255)
    assert {c.train.select_by for c in resolve_experiment({}).cells()} == {"clean", "pgd"}  # "auto" decided too


def test_specs_are_frozen_and_refuse_unknown_fields():
    cell = resolve_experiment({}).cells()[0]
    with pytest.raises(ValidationError):
        cell.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):  # the libraries' configs, frozen themselves
        cell.train.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.model.d_state = 3
    data = json.loads(cell.model_dump_json())
    data["train"]["methd"] = "trades"
    with pytest.raises(ValidationError, match="methd"):
        CellSpec.model_validate(data)
    assert ExperimentSpec.model_json_schema()["additionalProperties"] is False


@pytest.mark.parametrize("raw,overrides,message", [
    # the errors a sweep used to find hours in, at the cell that trains them
    ({"grid": {"layer": ["attention"]}, "model": {"layer_options": {"n_heads": 5}}}, {},
     "n_heads must be a positive int dividing d_model=32"),
    ({"grid": {"ads": ["none", "relu"]}, "model": {"transform": "ads", "transform_options": {"activation": "gelu"}}},
     {}, "unknown activation 'gelu'"),
    ({}, {"model.layer_options": {"no_such_option": 1}}, "no_such_option"),
    ({}, {"train.device": "cuda"}, "CUDA is not available here"),
    ({"grid": {"method": ["standard"]}, "train": {"method": "trades"}}, {}, "train.method = 'trades' would be ignored"),
    ({"model": {"epochs": 3}}, {}, "unknown key 'model.epochs'; it belongs in [train] (train.epochs)"),
    ({"name": "../../x"}, {}, "invalid name '../../x'"),
    ({"name": "a/b"}, {}, "invalid name 'a/b'"),
    ({}, {"eval.aa_attacks": ["apgd-ce", "apgd-xyz"]}, "invalid eval.aa_attacks entry 'apgd-xyz'"),
    ({}, {"train.select_by": "loss"}, "train.select_by must be 'auto', 'pgd' or 'clean'"),
    ({}, {"eval.aa_version": "random"},
     "invalid eval.aa_version 'random'; did you mean 'rand'? (choose one of standard, rand, custom)"),
    ({"eval": {"aa_version": "plus"}}, {}, "invalid eval.aa_version 'plus' (choose one of standard, rand, custom)"),
    ({}, {"train.aa_version": "random"}, "train.aa_version must be 'standard', 'rand' or 'custom', got 'random'"),
])
def test_every_cell_is_validated_before_the_first_trains(raw, overrides, message):
    if "CUDA" in message:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError) as info:
        resolve_experiment(raw, overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_rand_autoattack_is_accepted_and_reaches_every_cell():
    spec = resolve_experiment({"eval": {"aa_version": "rand"}}, overrides={"train.aa_version": "rand"})
    assert {(c.eval.aa_version, c.train.aa_version) for c in spec.cells()} == {("rand", "rand")}
    import tomllib

    assert resolve_experiment(tomllib.loads(spec.to_toml())) == spec


def test_dry_run_catches_the_same_errors(helpers):
    result = helpers.invoke("run", "--dry-run", "--set", "model.layer=attention",
                            "--set", "model.layer_options={n_heads=5}")
    assert result.exit_code == 2 and "dividing d_model" in result.output
    result = helpers.invoke("run", "--dry-run", "--name", "../escape")
    assert result.exit_code == 2 and "invalid name" in result.output


def test_a_setting_against_the_default_grid_replaces_the_axis():
    """[train] method = "trades" without a [grid] used to be ignored (the default grid standard, pgd-at won)."""
    spec = resolve_experiment({"train": {"method": "trades"}})
    assert [c.train.method for c in spec.cells()] == ["trades"]


def test_the_spec_is_resolved_once_and_written_without_the_grid_varied_keys():
    spec = resolve_experiment({"grid": {"layer": ["s4d", "s6"]}})
    text = spec.to_toml()
    import tomllib

    data = tomllib.loads(text)
    assert "layer" not in data["model"] and data["grid"] == {"layer": ["s4d", "s6"]}  # only in [grid]
    assert resolve_experiment(data) == spec
