"""The experiment spec: layering (defaults < preset < TOML < flags), TOML round trip, and one-line errors.

Ported from the RunConfig API that issue 11 replaced (a dict-holding config resolved again in cells(),
prepare_dir, run_config_of and _grid_order) to ExperimentSpec / CellSpec; every assertion on behaviour
and on the messages is kept.
"""
import pytest
from advssm.cli.errors import ConfigError
from advssm.cli.experiment.spec import parse_assignment
from advssm.cli.experiment.spec import resolve_experiment as resolve


def _roundtrip(config):
    import tomllib

    return resolve(tomllib.loads(config.to_toml()))


def _names(config):
    return [cell.name for cell in config.cells()]


def test_defaults_are_the_digits_demo():
    config = resolve({})
    assert config.data.dataset == "digits" and config.grid.axes() == {"method": ["standard", "pgd-at"]}
    assert config.model.layer == "s4d" and config.train.eps == 0.1
    assert _names(config) == ["standard", "pgd-at"]
    assert [cell.train.method for cell in config.cells()] == ["standard", "pgd-at"]


def test_toml_roundtrip_keeps_none_and_everything_else():
    config = resolve({"data": {"train_size": 100}}, overrides={"train.eval_n": None, "model.transform_layers": [0]})
    again = _roundtrip(config)
    assert again.to_dict() == config.to_dict() and again == config
    assert again.data.test_size is None and again.data.train_size == 100 and again.model.transform_layers == [0]


def test_preset_then_file_then_flags():
    config = resolve({"preset": "paper-mnist", "train": {"epochs": 7, "eps": 0.2}}, overrides={"train.eps": 0.25})
    assert config.data.dataset == "mnist" and config.cells()[0].model.d_state == 32 and config.model.n_layers == 2
    assert config.train.epochs == 7 and config.train.eps == 0.25 and config.train.alpha == 0.04
    cifar = resolve({}, overrides={"preset": "paper-cifar10", "model.layer": "s6"})
    assert cifar.train.eps == pytest.approx(8 / 255) and cifar.model.n_layers == 4
    tiny = resolve({"preset": "paper-tinyimagenet"})
    assert tiny.data.tiny_classes == 50 and tiny.train.epochs == 180


def test_grid_cells_cover_every_combination():
    config = resolve({"grid": {"layer": ["s4d", "s6"], "method": ["standard"], "ads": ["none", "relu"]}})
    names = _names(config)
    assert names == ["s4d-standard-none", "s4d-standard-relu", "s6-standard-none", "s6-standard-relu"]
    cell = {cell.name: cell for cell in config.cells()}["s6-standard-relu"]
    assert cell.model.layer == "s6" and cell.ads == "relu" and not hasattr(cell, "grid")


@pytest.mark.parametrize("values,overrides,message", [
    ({"train": {"epoch": 3}}, {}, "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
    ({"modle": {}}, {}, "unknown key 'modle'; did you mean 'model'?"),
    ({"model": {"d_modle": 3}}, {}, "did you mean 'model.d_model'?"),
    ({}, {"trian.epochs": 3}, "unknown setting 'trian.epochs'; did you mean 'train.epochs'?"),
    ({"data": {"dataset": "cifar"}}, {}, "invalid dataset 'cifar'; did you mean 'cifar10'?"),
    ({"grid": {"method": ["standard", "pgd"]}}, {}, "invalid setting: train.method must be one of"),
    ({"grid": {"layr": ["s4"]}}, {}, "unknown key 'grid.layr'; did you mean 'grid.layer'?"),
    ({}, {"model.layer": "s7"}, "unknown layer 's7'"),
    ({}, {"train.eps": 2.0}, "invalid setting: train.eps must be in (0, 1]"),
    ({}, {"data.train_size": -1}, "invalid data.train_size -1"),
    ({"model": {"n_classes": 3}}, {}, "model.n_classes is set by the data set"),
    ({"preset": "paper-mnst"}, {}, "unknown preset 'paper-mnst'; did you mean 'paper-mnist'?"),
    ({"ads": "gelu"}, {}, "invalid ads 'gelu'"),
    ({}, {"data.augment": 1}, 'invalid data.augment 1: must be true or false (or "none")'),
    ({}, {"data.download": "yes"}, "invalid data.download 'yes': must be true or false"),
    ({}, {"data.train_size": "abc"}, "invalid data.train_size 'abc': must be an int (or \"none\")"),
    ({}, {"data.tiny_classes": 0}, "invalid data.tiny_classes 0: must be an int >= 2"),
    ({}, {"eval.aa": "maybe"}, "invalid eval.aa 'maybe': must be true or false"),
    ({}, {"eval.train_n": -1}, "invalid eval.train_n -1: must be an int >= 0"),
    ({}, {"train.epochs": "abc"}, "invalid setting: train.epochs must be an int"),
])
def test_errors_name_the_key_and_the_fix(values, overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve(values, overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parse_assignment():
    assert parse_assignment("train.aa_n=8") == ("train.aa_n", 8)
    assert parse_assignment("model.layer=s6") == ("model.layer", "s6")
    assert parse_assignment("grid.method=['standard']") == ("grid.method", ["standard"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("epochs")


def test_cli_errors_exit_2_with_one_line(tmp_path, helpers):
    exp = tmp_path / "exp.toml"
    exp.write_text("[train]\nepohcs = 3\n")
    result = helpers.invoke("run", exp, "--dry-run")
    assert result.exit_code == 2 and "unknown key 'train.epohcs'; did you mean 'train.epochs'?" in result.output
    exp.write_text("[train\n")
    result = helpers.invoke("run", exp, "--dry-run")
    assert result.exit_code == 2 and "is not valid TOML" in result.output
    result = helpers.invoke("run", "--dry-run", "--eps", "3")
    assert result.exit_code == 2 and "train.eps must be in (0, 1]" in result.output


def test_missing_data_folder_exit_1_says_where(tmp_path, helpers):
    result = helpers.invoke("run", "--dataset", "cifar10", "--data-dir", tmp_path, "--no-progress")
    assert result.exit_code == 1
    assert "CIFAR-10 not found" in result.output and "cifar-10-batches-py" in result.output


def test_dry_run_prints_resolved_toml(helpers):
    import tomllib

    result = helpers.invoke("run", "--dry-run", "--preset", "paper-mnist", "--model", "s6", "--method", "trades",
                            "--ads", "relu", "--d-model", "64", "--train-size", "4000", "--seed", "3")
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.output)
    assert data["model"]["layer"] == "s6" and data["model"]["d_model"] == 64 and data["grid"]["method"] == ["trades"]
    assert data["ads"] == "relu" and data["data"]["train_size"] == 4000 and data["train"]["seed"] == 3
    assert data["data"]["dataset"] == "mnist" and data["train"]["eps"] == 0.3


def test_flag_for_a_grid_axis_replaces_that_axis():
    values = {"grid": {"layer": ["s4d", "s6"], "method": ["standard", "pgd-at"]}}
    config = resolve(values, overrides={"model.layer": "s5", "data.dataset": "digits"})
    assert config.grid.axes() == {"layer": ["s5"], "method": ["standard", "pgd-at"]}
    assert [cell.model.layer for cell in config.cells()] == ["s5", "s5"]
    assert resolve(values, overrides={"train.method": "trades"}).grid.method == ["trades"]


def test_method_flag_takes_a_list(helpers):
    import tomllib

    result = helpers.invoke("run", "--dry-run", "--method", "standard, trades")
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.output)["grid"]["method"] == ["standard", "trades"]


def test_existing_folder_with_an_equivalent_config_is_accepted(tmp_path):
    from advssm.cli.experiment.run_folder import prepare_dir

    config = resolve({}, overrides={"train.epochs": 2})
    (tmp_path / "config.toml").write_text("# edited by hand\n" + config.to_toml())
    prepare_dir(config, tmp_path)  # the same settings: no error
    with pytest.raises(ConfigError, match="holds a different experiment"):
        prepare_dir(resolve({}, overrides={"train.epochs": 3}), tmp_path)


@pytest.mark.parametrize("preset,layer,given,expected", [
    ("paper-cifar10", "s6", None, 16),  # Mamba's state is 16 on CIFAR-10 in the paper
    ("paper-cifar10", "s4", None, 64),
    ("paper-mnist", "s6", None, 32),
    ("paper-mnist", "mega", None, 16),  # Mega's EMA dimension is 16 everywhere
    ("paper-tinyimagenet", "mega", None, 16),
    ("paper-cifar10", "s6", 32, 32),  # an explicit value wins
])
def test_paper_presets_pick_d_state_per_layer(preset, layer, given, expected):
    overrides = {"preset": preset, "grid.layer": [layer, "dss"]} | ({"model.d_state": given} if given else {})
    config = resolve({}, overrides=overrides)
    assert config.paper_d_state == (given is None)
    assert config.to_dict()["model"]["d_state"] == (given or "paper")  # shown as "paper" by --dry-run
    cells = {cell.model.layer: cell for cell in config.cells()}
    other = given or (32 if preset == "paper-mnist" else 64)
    assert cells[layer].model.d_state == expected
    assert cells["dss"].model.d_state == other


def test_paper_d_state_needs_a_paper_preset():
    with pytest.raises(ConfigError, match='d_state "paper": it needs one of the paper presets'):
        resolve({"model": {"d_state": "paper"}})
