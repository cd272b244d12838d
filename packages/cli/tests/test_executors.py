"""advssm sweep --executor local (real submitit jobs on this machine) and advssm status.

Every job here is a real process started by submitit's local executor; the kill -9 test kills one of them by
its PID (from the cell's job record) and the rerun resumes it. Tiny settings: each cell trains 2 epochs of
2 batches on 64 digits.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from advssm.cli.experiment import cell_folder, jobs

GRID = """\
name = "tiny-grid"
[grid]
layer = ["s4d"]
method = {methods}
ads = {ads}
[data]
train_size = 64
test_size = 32
[model]
d_model = 8
n_layers = 1
d_state = 4
[train]
epochs = {epochs}
batch_size = 32
attack_steps = 2
eval_pgd_steps = 2
[eval]
aa_n = 8
aa_steps = 2
"""
AXES = {"s4d-standard-none": ("standard", "none"), "s4d-standard-relu": ("standard", "relu"),
        "s4d-pgd-at-none": ("pgd-at", "none"), "s4d-pgd-at-relu": ("pgd-at", "relu")}
CELLS = list(AXES)


def grid_file(tmp_path, methods=("standard", "pgd-at"), ads=("none", "relu"), epochs=2):
    path = tmp_path / f"grid-{len(methods)}-{len(ads)}-{epochs}.toml"
    path.write_text(GRID.format(methods=json.dumps(list(methods)), ads=json.dumps(list(ads)), epochs=epochs))
    return path


@pytest.fixture(scope="module")
def inline(tmp_path_factory, sweeps):
    """inline(cell name) -> the results of that cell run alone inline (today's executor), computed once: the
    reference every executor must reproduce (a cell spec is self-contained, so its grid does not matter)."""
    cache = {}

    def reference(name, epochs=2):
        if (name, epochs) not in cache:
            tmp = tmp_path_factory.mktemp("inline")
            method, ads = AXES[name]
            sweeps.sweep(grid_file(tmp, [method], [ads], epochs=epochs), "--out", tmp / "run")
            cache[name, epochs] = sweeps.results(tmp / "run" / name)
        return cache[name, epochs]

    return reference


def test_local_executor_matches_inline(tmp_path, inline, sweeps):
    out = tmp_path / "run"
    result = sweeps.sweep(grid_file(tmp_path), "--out", out, "--executor", "local", "--max-parallel", "2", "--wait")
    assert f"advssm status {out}" in result.output and "submitted 4 of 4 cells to local" in result.output
    for name in CELLS:
        assert sweeps.results(out / name) == inline(name), name
        record = jobs.read_record(out, name)
        # 2 cells at once on this machine's cores: the threads are split between them, unless OMP_NUM_THREADS says
        split = max(1, (os.cpu_count() or 1) // 2)
        assert record["state"] == "done" and record["threads"] == int(os.environ.get("OMP_NUM_THREADS") or split)
    shown = json.loads(sweeps.invoke("status", out, "--json").output)
    assert shown["counts"] == {"done": 4}
    for row in shown["cells"]:
        assert (row["epochs_done"], row["epochs_total"]) == (2, 2)
        assert row["best_pgd"] == cell_folder.read_summary(out / row["cell"])["best"]["pgd_acc"]  # the table's
        assert row["job_id"] == jobs.read_record(out, row["cell"])["job_id"] and row["last_line"]
    text = sweeps.invoke("status", out).output
    assert "| s4d-pgd-at-relu | done | 2/2 |" in text and "4 done" in text
    assert "partial" not in (out / "report.md").read_text().lower()


def test_kill_9_mid_epoch_then_rerun_gives_the_uninterrupted_results(tmp_path, inline, sweeps):
    # 12 tiny epochs (about 0.1 s each once the job is up): a wide enough window to land the kill mid-run
    epochs = 12
    out, grid = tmp_path / "run", grid_file(tmp_path, methods=["pgd-at"], epochs=epochs)
    result = sweeps.sweep(grid, "--out", out, "--executor", "local", "--max-parallel", "2")
    assert "submitted 2 of 2 cells to local" in result.output  # and returned: the jobs run on
    victim, other = "s4d-pgd-at-relu", "s4d-pgd-at-none"

    def mid_run():
        record = jobs.read_record(out, victim)
        if record.get("state") == "done":
            raise AssertionError(f"{victim} finished before the test could kill it mid-run")
        return record.get("state") == "running" and 1 <= len(cell_folder.read_metrics(out / victim)) < epochs - 2

    sweeps.wait_until(mid_run, poll_s=0.02, what=f"{victim} to be past its first epoch and before its last")
    os.kill(jobs.read_record(out, victim)["pid"], signal.SIGKILL)
    sweeps.wait_until(lambda: not jobs.pid_alive(jobs.read_record(out, victim).get("controller_pid")),
               what="the killed job's controller to end")
    rows = {row["cell"]: row for row in json.loads(sweeps.invoke("status", out, "--json").output)["cells"]}
    assert rows[victim]["state"] == "failed" and "ended before the cell was complete" in rows[victim]["error"]
    assert not cell_folder.is_complete(out / victim)
    # with nobody waiting, the job that completes a cell rewrites the report: partial, with that cell in it
    sweeps.wait_until(lambda: "1 of 2 cells are complete" in (out / "report.md").read_text(),
               what=f"{other}'s job to rewrite the report")
    assert f"| {other} |" in (out / "report.md").read_text()

    rerun = sweeps.sweep(grid, "--out", out, "--executor", "local", "--wait")
    # only the killed cell: the other one is complete, or still handled by its first job
    assert "submitted 1 of 2 cells" in rerun.output, rerun.output
    assert jobs.read_record(out, victim)["job_id"] in rerun.output
    for name in (victim, other):
        assert sweeps.results(out / name) == inline(name, epochs=epochs), name
    assert "partial" not in (out / "report.md").read_text().lower()


def test_failing_cell_is_retried_then_failed_and_the_others_go_on(tmp_path, sweeps):
    grid = grid_file(tmp_path, ads=["none"], epochs=1)
    out = tmp_path / "run"
    broken = out / "s4d-pgd-at-none"
    broken.mkdir(parents=True)
    # an earlier run of this grid (a run folder: its config.toml) whose cell's training state was damaged
    (out / "config.toml").write_text(grid.read_text())
    (broken / cell_folder.STATE_FILE).write_bytes(b"not a training state")  # the resume must refuse it
    result = sweeps.invoke("sweep", grid, "--out", out, "--executor", "local", "--retries", "1", "--wait",
                           "--no-progress")
    assert result.exit_code == 1, result.output
    assert "1 failed" in result.output and "s4d-pgd-at-none" in result.output
    record = jobs.read_record(out, "s4d-pgd-at-none")
    assert record["state"] == "failed" and record["attempt"] == 2  # one retry, then failed
    assert "train_state.pt" in record["error"] and Path(record["stderr"]).is_file()
    assert cell_folder.is_complete(out / "s4d-standard-none")  # the other cell went on
    shown = json.loads(sweeps.invoke("status", out, "--json").output)
    assert shown["counts"] == {"done": 1, "failed": 1}
    report = (out / "report.md").read_text()
    assert "partial" in report.lower() and "s4d-pgd-at-none" in report

    (broken / cell_folder.STATE_FILE).unlink()
    rerun = sweeps.sweep(grid, "--out", out, "--executor", "local", "--wait")
    assert "submitted 1 of 2 cells" in rerun.output, rerun.output
    assert jobs.read_record(out, "s4d-standard-none")["job_id"] != jobs.read_record(out, "s4d-pgd-at-none")["job_id"]
    assert cell_folder.is_complete(broken) and "partial" not in (out / "report.md").read_text().lower()


def test_two_sweeps_on_one_folder_refuse(tmp_path, sweeps):
    grid = grid_file(tmp_path, methods=["standard"], ads=["none"], epochs=1)
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "advssm.cli", "sweep", str(grid), "--out", str(out),
                              "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sweeps.wait_until(lambda: jobs.is_locked(jobs.sweep_lock_path(out)), timeout_s=120,
                   what="the first sweep to take the folder")
        second = sweeps.invoke("sweep", grid, "--out", out, "--no-progress")
        assert second.exit_code == 1 and "in use by another advssm command" in second.output, second.output
        assert f"pid {first.pid}" in second.output
        assert first.wait(timeout=240) == 0, first.stdout.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert cell_folder.is_complete(out / "s4d-standard-none")
