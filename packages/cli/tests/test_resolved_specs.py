"""The spec is resolved once, at the run's entry: config.toml, spec.json and every cell's cell.json are written
before any cell trains, and everything after the entry (status, report, eval, a job's report step, resume) reads
those resolved files instead of resolving the TOML again. Folders of earlier versions (config.toml only, cell.json
only in started cells) still work."""
import json
import shutil

import pytest
from advssm.cli.execution import inline
from advssm.cli.experiment import cell_folder, run_folder
from advssm.cli.experiment.spec import resolve_experiment


def _no_resolving(monkeypatch):
    """Make any resolution of a stored TOML fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the stored TOML was resolved again")

    monkeypatch.setattr(run_folder, "resolve_experiment", refuse)


def test_every_cell_spec_is_written_before_the_first_cell_trains(tmp_path, helpers, monkeypatch):
    out = tmp_path / "run"
    seen = {}
    real = inline.run_cell

    def spy(cell, cell_dir, *args, **kwargs):
        if not seen:  # the first cell is about to train: every cell's own spec is there already
            seen.update({name: cell_folder.read_cell(out / name) for name in ("standard", "pgd-at")})
            seen["spec.json"] = json.loads((out / run_folder.SPEC_FILE).read_text())
        return real(cell, cell_dir, *args, **kwargs)

    monkeypatch.setattr(inline, "run_cell", spy)
    assert helpers.invoke("run", *helpers.TINY, "--epochs", "1", "--out", out).exit_code == 0
    assert seen["standard"].train.method == "standard" and seen["pgd-at"].train.method == "pgd-at"
    assert seen["spec.json"]["cells"] == ["standard", "pgd-at"]
    spec = run_folder.read_spec(out)
    assert run_folder.same_experiment(spec, resolve_experiment({}, {"train.epochs": 1, **_tiny_overrides(out)}))
    assert [c.name for c in run_folder.read_cells(out)] == ["standard", "pgd-at"]


def _tiny_overrides(out):
    """The overrides the tiny run resolved with, read back from its config.toml (for the comparison above)."""
    from advssm.cli.experiment.spec import load_toml

    return {f"{section}.{key}": value for section, table in load_toml(out / "config.toml").items()
            if isinstance(table, dict) for key, value in table.items()}


def test_status_report_and_eval_read_the_resolved_specs(tiny_run, tmp_path, helpers, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _no_resolving(monkeypatch)
    result = helpers.invoke("status", run)
    assert result.exit_code == 0 and "| pgd-at | done |" in result.output
    assert helpers.invoke("report", run, "--html").exit_code == 0
    result = helpers.invoke("eval", run / "pgd-at" / "best.safetensors", "--attacks", "fgsm", "--no-progress")
    assert result.exit_code == 0, result.output
    result = helpers.invoke("run", "--resume", run, "--no-progress")  # resume starts from spec.json
    assert result.exit_code == 0 and "finished, skipped" in result.output
    result = helpers.invoke("run", "--resume", run, "--lr", "-1")  # a changed setting is checked as run checks it
    assert result.exit_code == 2 and "lr" in result.output
    # a rerun of the same experiment into the folder compares with the stored resolved spec, and skips every cell
    monkeypatch.undo()
    result = helpers.invoke("run", *helpers.TINY, "--out", run)
    assert result.exit_code == 0 and "finished, skipped" in result.output


def test_a_folder_of_an_earlier_version_still_works(tiny_run, tmp_path, helpers):
    """Before spec.json, a run wrote config.toml and each cell's cell.json when the cell started."""
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    (run / run_folder.SPEC_FILE).unlink()
    (run / "pgd-at" / cell_folder.CELL_FILE).unlink()
    assert [c.name for c in run_folder.read_cells(run)] == ["standard", "pgd-at"]
    result = helpers.invoke("status", run)
    assert result.exit_code == 0 and "| pgd-at | done |" in result.output
    assert helpers.invoke("report", run).exit_code == 0
    result = helpers.invoke("run", "--resume", run, "--no-progress")
    assert result.exit_code == 0, result.output
    # resuming brings the folder up to date: the resolved specs are written, from the one resolution of its TOML
    assert (run / run_folder.SPEC_FILE).is_file() and cell_folder.read_cell(run / "pgd-at").name == "pgd-at"


@pytest.mark.parametrize("damage", ["not json", '{"spec": {}}', '[1]'])
def test_a_damaged_spec_json_is_named(tiny_run, tmp_path, helpers, damage):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / run_folder.SPEC_FILE).write_text(damage)
    result = helpers.invoke("status", run)
    assert result.exit_code != 0 and str(run / run_folder.SPEC_FILE) in result.output


def test_a_cell_json_copied_from_another_cell_is_named(tiny_run, tmp_path, helpers):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copy(run / "standard" / cell_folder.CELL_FILE, run / "pgd-at" / cell_folder.CELL_FILE)
    result = helpers.invoke("status", run)
    assert result.exit_code != 0 and "is the spec of cell 'standard', not of 'pgd-at'" in result.output
