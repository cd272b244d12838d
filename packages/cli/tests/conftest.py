"""Shared fixtures: the tiny CLI settings and one tiny run reused by the read-only tests."""
import json
import os
import time
from types import SimpleNamespace

# One torch thread per test process, set before torch is imported here and inherited by the subprocess tests:
# the suite runs as 2 xdist workers on 2 cores, and more threads than free cores make these tiny models up to
# 10x slower (threads spin-waiting on each other); the subprocess tests also compare their numbers with
# in-process runs, which needs the same thread count on both sides.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
from advssm.cli.experiment import cell_folder
from advssm.cli.main import cli
from click.testing import CliRunner

torch.set_num_threads(1)  # in case another package's tests imported torch first

# a model and budget small enough that a two-cell run takes seconds on 2 CPU cores
TINY = ["--train-size", "64", "--test-size", "32", "--epochs", "2", "--d-model", "8", "--d-state", "4",
        "--n-layers", "1", "--no-progress", "--set", "train.batch_size=32", "--set", "train.attack_steps=2",
        "--set", "train.eval_pgd_steps=2", "--set", "eval.aa_n=8", "--set", "eval.aa_steps=2"]
TIMING_KEYS = ("train_time", "epoch_time")


def invoke(*args):
    """Run the CLI in-process; returns click's Result (exit_code, output, exception)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def metrics_without_timing(cell_dir):
    rows = [json.loads(line) for line in (cell_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def sweep(*args):
    """``advssm sweep ARGS --no-progress`` in-process; fails the test unless it exits 0."""
    result = invoke("sweep", *args, "--no-progress")
    assert result.exit_code == 0, result.output
    return result


def cell_results(cell_dir) -> dict:
    """What a cell computed: its per-epoch metrics (without timings) and its table row."""
    metrics = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in cell_folder.read_metrics(cell_dir)]
    summary = cell_folder.read_summary(cell_dir)
    return {"metrics": metrics, "best": summary["best"], "last": summary["last"]}


def wait_until(predicate, timeout_s=240, what="condition", poll_s=0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="session")
def sweeps():
    """The sweep tests' helpers (the executors' and the Slurm cluster's): invoke, sweep, results, wait_until."""
    return SimpleNamespace(invoke=invoke, sweep=sweep, results=cell_results, wait_until=wait_until)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished two-cell run (standard vs PGD-AT) on tiny settings."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("run", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def helpers():
    return type("Helpers", (), {"invoke": staticmethod(invoke), "TINY": TINY,
                                "metrics": staticmethod(metrics_without_timing)})
