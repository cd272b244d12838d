"""The installed entry point as a user runs it, in a real process: run, Ctrl-C and resume, eval, sweep, report."""
import json
import os
import signal
import subprocess
import sys

import tomllib
from advssm.cli.experiment import cell_folder

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _cli(cwd, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "advssm.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def test_subprocess_run_and_exit_codes(tmp_path, helpers):
    def cli(*args):
        return _cli(tmp_path, *args)

    out = tmp_path / "sub"
    done = cli("run", *helpers.TINY, "--method", "standard", "--epochs", "1", "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cells"]["standard"]["last"]["epoch"] == 1
    assert tomllib.loads((out / "config.toml").read_text())["grid"]["method"] == ["standard"]
    bad = cli("run", "--dry-run", "--set", "train.epoch=3")
    assert bad.returncode == 2 and "did you mean 'train.epochs'" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli("run", "--dataset", "mnist", "--data-dir", tmp_path / "nothing", "--no-progress")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    last = missing.stderr.strip().splitlines()[-1]
    # the data sets are loaded before the first cell trains; the error names the cell
    assert last.startswith("Error: cell standard: MNIST not found") and "MNIST/raw" in last and "--download" in last
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no empty run folder left
    debug = cli("--debug", "run", "--dataset", "mnist", "--data-dir", tmp_path / "nothing", "--no-progress")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_ctrl_c_then_resume_gives_the_uninterrupted_numbers(tmp_path, helpers, tiny_run):
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "advssm.cli", "run", *map(str, helpers.TINY), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    # interrupt as the first cell starts training: both cells' training is still ahead (waiting for the first
    # cell's metrics file left under a second of work on an idle machine, and a loaded CI runner missed it)
    seen = []
    for line in proc.stderr:  # blocks until the run prints; ends if it exits first
        seen.append(line)
        if line.startswith("[1/2] standard: training"):
            break
    assert seen and seen[-1].startswith("[1/2] standard: training"), "".join(seen)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert f"advssm run --resume {out}" in stderr and "Traceback" not in stderr
    assert (out / "config.toml").is_file() and not cell_folder.is_complete(out / "pgd-at")

    resumed = _cli(tmp_path, "run", "--resume", out, "--no-progress", "--json")
    assert resumed.returncode == 0, resumed.stderr
    cells = json.loads(resumed.stdout)["cells"]
    for cell in ("standard", "pgd-at"):
        assert cells[cell] == cell_folder.read_summary(tiny_run / cell)
        assert helpers.metrics(out / cell) == helpers.metrics(tiny_run / cell)
    assert (out / "report.md").is_file()


def test_subprocess_eval_sweep_report(tmp_path, tiny_run):
    evaluated = _cli(tmp_path, "eval", tiny_run / "standard" / "best.safetensors", "--attacks", "pgd", "--steps", "1",
                     "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    best = cell_folder.read_summary(tiny_run / "standard")["best"]
    assert json.loads(evaluated.stdout)["clean_acc"] == best["clean_acc"]

    grid = tmp_path / "grid.toml"
    grid.write_text('name = "one"\n[grid]\nmethod = ["standard"]\n[data]\ntrain_size = 32\ntest_size = 16\n'
                    '[model]\nd_model = 8\nd_state = 4\nn_layers = 1\n[train]\nepochs = 1\n'
                    '[eval]\naa_n = 4\naa_steps = 1\ntrain_n = 8\n')
    swept = _cli(tmp_path, "sweep", grid, "--out", "zoo", "--no-progress", "--json")
    assert swept.returncode == 0, swept.stderr
    assert list(json.loads(swept.stdout)["cells"]) == ["standard"] and (tmp_path / "zoo" / "report.md").is_file()

    reported = _cli(tmp_path, "report", "zoo", tiny_run, "--out", "cmp", "--json")
    assert reported.returncode == 0, reported.stderr
    assert list(json.loads(reported.stdout)["cells"]) == ["zoo/standard", "tiny/standard", "tiny/pgd-at"]
    assert (tmp_path / "cmp" / "report.md").is_file() and (tmp_path / "cmp" / "accuracy.png").is_file()
