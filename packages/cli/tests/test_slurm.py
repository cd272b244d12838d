"""advssm sweep --executor slurm against a real one-node Slurm cluster (nox -s slurm starts it with
.ci/slurm/start.sh and stops it by PID afterwards; SLURM_CONF points at it).

Nothing is mocked: the jobs are sbatch job arrays, the requeue is `scontrol requeue` (what a preemption does),
the timeout is submitit's own USR2 signal through `scancel --signal`, and a 2-rank cell runs under srun.
"""
import json
import os
import subprocess

import pytest
from advssm.cli.experiment import cell_folder, jobs

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not os.environ.get("ADVSSM_SLURM_TESTS"),
                       reason="needs the one-node Slurm cluster that `nox -s slurm` starts"),
]

SLURM_WAIT_S = 600  # a job waits in the queue and starts a fresh interpreter: longer than the local waits
GRID = """\
name = "slurm-grid"
[grid]
layer = ["s4d"]
method = {methods}
ads = {ads}
[data]
train_size = {train_size}
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
[executor]
kind = "slurm"
cpus_per_cell = {cpus}
time = "00:20:00"
"""


def grid(tmp_path, methods=("standard", "pgd-at"), ads=("none",), epochs=2, train_size=64, cpus=1, extra=""):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(methods=json.dumps(list(methods)), ads=json.dumps(list(ads)), epochs=epochs,
                                train_size=train_size, cpus=cpus) + extra)
    return path


def slurm_state(job_id):
    return jobs.slurm_queue([job_id]).get(job_id, ("GONE", ""))[0]


def statuses(out, sweeps):
    return {row["cell"]: row for row in json.loads(sweeps.invoke("status", out, "--json").output)["cells"]}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip(), f"no Slurm cluster answers: {done.stderr}"


def test_two_cells_finish_as_a_job_array(tmp_path, sweeps):
    out = tmp_path / "run"
    result = sweeps.sweep(grid(tmp_path), "--out", out, "--wait")
    assert "submitted 2 of 2 cells to slurm" in result.output
    ids = [jobs.read_record(out, name)["job_id"] for name in ("s4d-standard-none", "s4d-pgd-at-none")]
    assert ids[0].split("_")[0] == ids[1].split("_")[0] and ids[0] != ids[1]  # one array, two tasks
    for name in ("s4d-standard-none", "s4d-pgd-at-none"):
        assert cell_folder.is_complete(out / name)
        job_id = jobs.read_record(out, name)["job_id"]  # the job ends a moment after its cell is complete
        sweeps.wait_until(lambda job_id=job_id: slurm_state(job_id) == "COMPLETED", timeout_s=60, what=f"job {job_id}")
    assert {row["state"] for row in statuses(out, sweeps).values()} == {"done"}


def test_requeued_and_timed_out_cells_resume_from_their_last_finished_epoch(tmp_path, sweeps):
    """Cell A is requeued by `scontrol requeue` (preemption), cell B gets submitit's timeout signal (USR2,
    the checkpoint hook requeues it); both continue from their last finished epoch and end with the results
    of an uninterrupted inline run."""
    epochs, a, b = 20, "s4d-pgd-at-none", "s4d-pgd-at-relu"
    left = 15  # epochs still to go, at least, when a job is interrupted
    # PGD-AT epochs of 32 batches: the 15 epochs still to go when a job is interrupted outlast the seconds Slurm
    # waits between the SIGTERM of a requeue (which submitit ignores) and its SIGKILL (KillWait=2) even on an idle
    # machine (with 5 left, at about 0.3 s an epoch, a cell finished inside that grace on a clean CI run)
    path = grid(tmp_path, methods=["pgd-at"], ads=["none", "relu"], epochs=epochs, train_size=1024)
    reference = tmp_path / "inline"
    sweeps.sweep(path, "--out", reference, "--executor", "inline")
    out = tmp_path / "run"
    sweeps.sweep(path, "--out", out)  # returns once submitted

    def mid_run(name):
        done = len(cell_folder.read_metrics(out / name))
        return jobs.read_record(out, name).get("state") == "running" and 1 <= done <= epochs - left

    interrupted = {}
    for name, how in ((a, ["scontrol", "requeue"]), (b, ["scancel", "--signal=USR2"])):
        sweeps.wait_until(lambda name=name: mid_run(name), what=f"{name} to be mid-run", timeout_s=SLURM_WAIT_S)
        job_id = jobs.read_record(out, name)["job_id"]
        interrupted[name] = len(cell_folder.read_metrics(out / name))
        subprocess.run([*how, job_id], check=True, timeout=60)
    for name in (a, b):
        job_id = jobs.read_record(out, name)["job_id"]
        sweeps.wait_until(lambda job_id=job_id: slurm_state(job_id) == "PENDING", what=f"{name}'s job to be requeued",
                          timeout_s=SLURM_WAIT_S)
        assert not cell_folder.is_complete(out / name), f"{name} ended before its job was stopped"
        assert statuses(out, sweeps)[name]["state"] == "requeued"
        # a requeued job waits about two minutes before Slurm starts it again; release it now
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=60)
    sweeps.wait_until(lambda: all(cell_folder.is_complete(out / name) for name in (a, b)), what="both cells to end",
                      timeout_s=SLURM_WAIT_S)
    for name in (a, b):
        record = jobs.read_record(out, name)
        assert record["state"] == "done" and record["restarts"] == 1, record
        log = open(record["stderr"]).read()
        # no epoch twice: the second start began after the last epoch the first one finished (an epoch's log line
        # can be missing: a job stopped between saving an epoch and printing its line resumes after that epoch)
        for epoch in range(1, epochs + 1):
            assert log.count(f"{name} epoch {epoch}/{epochs}:") <= 1, (epoch, log[-3000:])
        assert [m["epoch"] for m in cell_folder.read_metrics(out / name)] == list(range(1, epochs + 1))
        assert sweeps.results(out / name) == sweeps.results(reference / name), name
    assert all(1 <= n <= epochs - left for n in interrupted.values())
    assert "preempted" in open(jobs.read_record(out, b)["stdout"]).read()  # submitit's checkpoint hook ran


def test_a_two_rank_cell_runs_under_srun_and_writes_one_folder(tmp_path, sweeps):
    out = tmp_path / "run"
    path = grid(tmp_path, methods=["standard"], cpus=2, extra="ranks_per_cell = 2\n")
    sweeps.sweep(path, "--out", out, "--wait")
    record = jobs.read_record(out, "s4d-standard-none")
    assert record["ranks"] == 2 and record["state"] == "done"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["jobs", "s4d-standard-none"]
    reference = tmp_path / "inline"
    sweeps.sweep(path, "--out", reference, "--executor", "inline")
    two, one = sweeps.results(out / "s4d-standard-none"), sweeps.results(reference / "s4d-standard-none")
    assert len(two["metrics"]) == len(one["metrics"]) == 2
    for m2, m1 in zip(two["metrics"], one["metrics"]):
        # the 2-rank gradient is the 1-process one up to float32 summation order
        assert abs(m2["train_loss"] - m1["train_loss"]) <= 1e-4 * abs(m1["train_loss"])
        assert abs(m2["clean_acc"] - m1["clean_acc"]) <= 1 / 32
