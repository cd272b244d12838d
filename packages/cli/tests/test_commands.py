"""sweep, report, analyze, info and the subprocess entry point."""
import json
import os
import subprocess
import sys

import tomllib
from advssm.cli import runs


def test_sweep_runs_cells_then_skips_finished(tmp_path, helpers):
    grid = tmp_path / "grid.toml"
    grid.write_text('name = "zoo"\n[grid]\nmethod = ["standard"]\nads = ["none", "relu"]\n'
                    '[train]\nepochs = 1\n')
    out = tmp_path / "zoo"
    args = ["sweep", grid, "--out", out, "--no-progress", "--set", "data.train_size=32", "--set", "data.test_size=16",
            "--set", "model.d_model=8", "--set", "model.d_state=4", "--set", "model.n_layers=1"]
    result = helpers.invoke(*args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in runs.find_cells(out)) == ["standard-none", "standard-relu"]
    from advssm.ssm_layers import load_checkpoint

    model, _ = load_checkpoint(out / "standard-relu" / "last.safetensors")
    assert model.config.transform == "ads" and model.config.transform_options["activation"] == "relu"
    before = {p: (p / "summary.json").stat().st_mtime_ns for p in runs.find_cells(out)}
    result = helpers.invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    assert "standard-none: finished, skipped" in result.output and "standard-relu: finished, skipped" in result.output
    assert before == {p: (p / "summary.json").stat().st_mtime_ns for p in runs.find_cells(out)}
    table = (out / "report.md").read_text()
    assert "| standard-none |" in table and "| standard-relu |" in table


def test_report_compares_runs(tiny_run, tmp_path, helpers):
    result = helpers.invoke("report", tiny_run, tiny_run / "pgd-at", "--out", tmp_path / "cmp", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["cells"]) == {"tiny/standard", "tiny/pgd-at", "tiny/pgd-at #2"}
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert text.count("| tiny/") == 3 and (tmp_path / "cmp" / "accuracy.png").is_file()
    assert data["cells"]["tiny/pgd-at"] == runs.read_summary(tiny_run / "pgd-at")


def test_report_of_a_folder_without_runs(tmp_path, helpers):
    result = helpers.invoke("report", tmp_path)
    assert result.exit_code == 2 and "has no finished cell" in result.output


def test_analyze_table_and_plot(tiny_run, tmp_path, helpers):
    plot = tmp_path / "prop.png"
    result = helpers.invoke("analyze", tiny_run / "pgd-at" / "best.safetensors", "--n", "8", "--steps", "2",
                            "--plot", plot, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["n_examples"] == 8 and plot.read_bytes()[:4] == b"\x89PNG"
    assert data["perturbation_linf"] <= 0.1 + 1e-6  # the run's eps, read from its config.toml


def test_info_json(helpers):
    result = helpers.invoke("info", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["versions"]["advssm-cli"] and data["versions"]["torch"] and "device" in data


def test_every_command_has_help_with_examples(helpers):
    for command in ("run", "eval", "sweep", "report", "analyze", "bench", "info"):
        result = helpers.invoke(command, "--help")
        assert result.exit_code == 0 and "Examples:" in result.output, command


def test_subprocess_run_and_exit_codes(tmp_path, helpers):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "advssm.cli", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    out = tmp_path / "sub"
    done = cli("run", *helpers.TINY, "--method", "standard", "--epochs", "1", "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cells"]["standard"]["last"]["epoch"] == 1
    assert tomllib.loads((out / "config.toml").read_text())["grid"]["method"] == ["standard"]
    bad = cli("run", "--dry-run", "--set", "train.epoch=3")
    assert bad.returncode == 2 and "did you mean 'train.epochs'" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli("run", "--dataset", "mnist", "--data-dir", tmp_path / "nothing", "--no-progress")
    assert missing.returncode == 1 and "MNIST not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in missing.stderr
    debug = cli("--debug", "run", "--dataset", "mnist", "--data-dir", tmp_path / "nothing", "--no-progress")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
