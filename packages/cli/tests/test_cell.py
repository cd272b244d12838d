"""Issue 11 items 2-8 through the CLI: the cell folder, selection, init-from, resume changes, the environment
record, SIGTERM, the evaluation's records and RobustBench record, and the hardening of run/eval/analyze."""
import json
import os
import signal
import subprocess
import sys
import warnings

import advssm.cli.experiment.cell_runner as cell_runner
import pytest
from advssm.cli.experiment import cell_folder, run_folder
from advssm.cli.experiment.spec import CellSpec
from advssm.cli.progress import TqdmProgress

ONE = ["--method", "standard", "--set", "eval.train_n=0"]


class _StopAfterFirstEpoch(TqdmProgress):
    def on_epoch_end(self, trainer, epoch, metrics):
        super().on_epoch_end(trainer, epoch, metrics)
        if epoch == 1:
            raise KeyboardInterrupt


def _interrupted_run(helpers, monkeypatch, out, *extra):
    with monkeypatch.context() as patch:
        patch.setattr(cell_runner, "TqdmProgress", _StopAfterFirstEpoch)
        result = helpers.invoke("run", *helpers.TINY, *ONE, *extra, "--out", out)
    assert result.exit_code == 130, result.output
    return out / "standard"


def test_cell_folder_files_and_progress(tiny_run):
    cell_dir = tiny_run / "pgd-at"
    cell = cell_folder.read_cell(cell_dir)
    assert isinstance(cell, CellSpec) and cell.name == "pgd-at" and cell.train.method == "pgd-at"
    assert cell_folder.read_progress(cell_dir) == {
        "epochs_done": 2, "epochs_total": 2, "complete": True,
        "best_pgd_acc": cell_folder.read_summary(cell_dir)["best"]["pgd_acc"]}  # the table's Best, as status shows it
    # the trainer's summary.json is the trainer's alone; the final evaluation lives beside it
    trainer_summary = json.loads((cell_dir / "summary.json").read_text())
    assert "final_eval" not in trainer_summary and trainer_summary["best"]["aa_acc"] is None
    final = cell_folder.read_final_eval(cell_dir)
    row = cell_folder.read_summary(cell_dir)
    assert row["best"]["aa_acc"] == final["stages"]["best"]["aa_acc"]
    assert row["diff"]["clean_acc"] == pytest.approx(row["best"]["clean_acc"] - row["last"]["clean_acc"])
    records = [json.loads(line) for line in (cell_dir / "final_eval_last.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(8))
    assert all(r["broken_by"] is None or r["clean_correct"] for r in records)
    # the checkpoint carries the whole cell spec
    from advssm.ssm_layers import read_metadata

    assert CellSpec.model_validate(read_metadata(cell_dir / "best.safetensors")["user"]["cell"]) == cell


def test_final_evaluation_runs_on_the_same_examples_with_the_trainers_seeds(tiny_run):
    """Re-evaluating the last checkpoint on the trainer's examples with the epoch's seed gives the epoch's numbers."""
    import torch
    from advssm.adv_train.attacks import PGD
    from advssm.adv_train.evaluation import evaluate
    from advssm.adv_train.trainer import eval_seed
    from advssm.cli.data import load_dataset
    from advssm.ssm_layers import load_checkpoint

    cell = cell_folder.read_cell(tiny_run / "pgd-at")
    model, _ = load_checkpoint(tiny_run / "pgd-at" / "last.safetensors")
    data = load_dataset("digits", test_size=32)
    seed = eval_seed(cell.train.seed, 2)
    pgd = PGD(model, eps=cell.train.eps, alpha=cell.train.alpha, steps=cell.train.eval_pgd_steps, random_start=True)
    result = evaluate(model, data.test, {"pgd": pgd}, batch_size=cell.train.batch_size, seed=seed,
                      check_masking=False)
    last = cell_folder.read_metrics(tiny_run / "pgd-at")[-1]
    assert result.clean_acc == last["clean_acc"] and result.robust_acc["pgd"] == last["pgd_acc"]
    assert torch.device("cpu") == next(model.parameters()).device


def test_select_on_val_holds_out_and_reports_the_test_numbers(tmp_path, helpers):
    out = tmp_path / "val"
    result = helpers.invoke("run", *helpers.TINY, *ONE, "--select-on", "val", "--set", "train.val_n=16",
                            "--out", out)
    assert result.exit_code == 0, result.output
    metrics = cell_folder.read_metrics(out / "standard")
    assert all("val_clean_acc" in m and "val_pgd_acc" in m for m in metrics)
    row = cell_folder.read_summary(out / "standard")
    assert row["selection"]["on"] == "val" and row["selection"]["by"] == "clean"
    best = max(metrics, key=lambda m: (m["val_clean_acc"], -m["epoch"]))
    assert row["best"]["epoch"] == best["epoch"] and row["selection"]["val"]["val_clean_acc"] == best["val_clean_acc"]
    report = (out / "report.md").read_text()
    assert "a validation slice held out from the training set" in report and "val clean" in report


def test_init_from_loads_the_weights_and_refuses_another_architecture(tmp_path, helpers, tiny_run):
    source = tiny_run / "standard" / "last.safetensors"
    out = tmp_path / "warm"
    result = helpers.invoke("run", *helpers.TINY, "--method", "pgd-at", "--set", "eval.train_n=0", "--epochs", "1",
                            "--init-from", source, "--eps-warmup-epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert cell_folder.read_cell(out / "pgd-at").init_from == str(source)
    assert f"Initialised from: {source}." in (out / "report.md").read_text()
    result = helpers.invoke("run", *helpers.TINY, *ONE, "--d-model", "16", "--init-from", source, "--out",
                            tmp_path / "other")
    assert result.exit_code == 2 and "another architecture: d_model 8 (this cell: 16)" in result.output


def test_resume_at_a_new_rate_is_recorded(tmp_path, monkeypatch, helpers):
    cell_dir = _interrupted_run(helpers, monkeypatch, tmp_path / "lr")
    with pytest.warns(UserWarning, match="lr 0.01 -> 0.001 from epoch 2"):
        result = helpers.invoke("run", "--resume", tmp_path / "lr", "--lr", "1e-3", "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = cell_folder.read_metrics(cell_dir)
    # epoch 2 of 2 runs at half the base rate on the cosine schedule: now the new base 1e-3, not 1e-2
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["lr"] == pytest.approx(0.5e-3, rel=1e-6)
    environment = json.loads((cell_dir / "environment.json").read_text())
    assert environment["changes"] == [{"from_epoch": 2, "lr": {"was": 0.01, "now": 0.001}}]
    assert cell_folder.read_summary(cell_dir)["changes"] == environment["changes"]
    assert "lr 0.01 -> 0.001 (resumed with a changed setting" in (tmp_path / "lr" / "report.md").read_text()
    # the resolved specs say the new rate too: the run's spec.json and the resumed cell's own cell.json
    assert run_folder.read_spec(tmp_path / "lr").train.lr == 1e-3 and cell_folder.read_cell(cell_dir).train.lr == 1e-3
    result = helpers.invoke("run", "--resume", tmp_path / "lr", "--epochs", "3")
    assert result.exit_code == 2 and "only --lr and --batch-size may change" in result.output


def test_a_nan_stop_names_the_resume_flag(tmp_path, helpers):
    result = helpers.invoke("run", *helpers.TINY, *ONE, "--lr", "1e30", "--set", "train.scheduler=none",
                            "--out", tmp_path / "nan")
    assert result.exit_code == 1
    assert "non-finite training loss" in result.output and f"--resume {tmp_path / 'nan'} --lr" in result.output


def test_a_resume_in_another_environment_warns_naming_both(tmp_path, monkeypatch, helpers):
    import torch

    cell_dir = _interrupted_run(helpers, monkeypatch, tmp_path / "env")
    assert json.loads((cell_dir / "environment.json").read_text())["starts"][0]["threads"] == 1
    torch.set_num_threads(2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = helpers.invoke("run", "--resume", tmp_path / "env", "--no-progress")
    finally:
        torch.set_num_threads(1)
    assert result.exit_code == 0, result.output
    assert any("threads 1 -> 2" in str(w.message) for w in caught)
    starts = json.loads((cell_dir / "environment.json").read_text())["starts"]
    assert [s["threads"] for s in starts] == [1, 2] and starts[1]["from_epoch"] == 1


def test_a_corrupt_training_state_names_the_file_and_the_fix(tmp_path, monkeypatch, helpers):
    cell_dir = _interrupted_run(helpers, monkeypatch, tmp_path / "corrupt")
    state = cell_dir / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    result = helpers.invoke("run", "--resume", tmp_path / "corrupt", "--no-progress")
    assert result.exit_code == 1 and f"the training state {state} is corrupt or truncated" in result.output
    assert f"delete {state}" in result.output


def test_sigterm_prints_the_resume_hint(tmp_path, helpers):
    out = tmp_path / "term"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "advssm.cli", "run", *map(str, helpers.TINY), *ONE, "--epochs", "4",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stderr:  # SIGTERM as the cell starts training (its epochs are all ahead); ends if it exits
        seen.append(line)
        if line.startswith("[1/1] standard: training"):
            break
    assert seen and seen[-1].startswith("[1/1] standard: training"), "".join(seen)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert f"advssm run --resume {out}" in stderr and "Traceback" not in stderr


def test_eval_resume_and_robustbench_record(tiny_run, tmp_path, helpers):
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes((tiny_run / "pgd-at" / "best.safetensors").read_bytes())
    args = ["eval", ckpt, "--attacks", "pgd,apgd-ce", "--batch-size", "4", "--json", "--no-progress"]
    full = helpers.invoke(*args)
    assert full.exit_code == 0, full.output
    whole = json.loads(full.stdout)
    records = tmp_path / "best.eval.jsonl"
    lines = records.read_text().splitlines()
    assert len(lines) == whole["n"] == 8
    record = json.loads((tmp_path / "best.robustbench.json").read_text())
    assert record["clean_acc"] == f"{100 * whole['clean_acc']:.2f}" and record["n_examples"] == 8
    assert record["threat_model"] == "Linf" and record["eps"] == 0.1 and record["architecture"].startswith("s4d")
    records.write_text("\n".join(lines[:4]) + "\n")  # an evaluation cut after its first batch of 4
    resumed = helpers.invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    again = json.loads(resumed.stdout)
    assert (again["clean_acc"], again["robust_acc"], again["worst_acc"]) == \
        (whole["clean_acc"], whole["robust_acc"], whole["worst_acc"])
    assert records.read_text().splitlines() == lines


@pytest.mark.parametrize("command,args,message", [
    ("eval", ["--eps", "2"], "--eps"), ("eval", ["--n", "0"], "--n"), ("eval", ["--batch-size", "0"], "--batch-size"),
    ("eval", ["--steps", "0"], "--steps"), ("analyze", ["--eps", "0"], "--eps"), ("analyze", ["--n", "-3"], "--n"),
    ("analyze", ["--steps", "0"], "--steps"),
])
def test_eval_and_analyze_check_their_numbers(tiny_run, helpers, command, args, message):
    result = helpers.invoke(command, tiny_run / "pgd-at" / "best.safetensors", *args)
    assert result.exit_code == 2 and message in result.output


def test_eval_stops_at_a_swallowed_ctrl_c_and_resumes(tiny_run, tmp_path, helpers, monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt Python dropped (it arrived in a __del__) still stops ``advssm eval`` at its
    next progress step, with the resume hint; --resume then finishes the same evaluation."""
    import contextlib
    import signal as signals

    from advssm.cli import interrupts

    real = interrupts.handled

    @contextlib.contextmanager
    def swallowed_at_start():
        with real():
            interrupts._received.append(signals.SIGINT)  # what the handler records before its raise is dropped
            yield

    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes((tiny_run / "pgd-at" / "best.safetensors").read_bytes())
    args = ["eval", ckpt, "--attacks", "pgd", "--batch-size", "4", "--json", "--no-progress"]
    monkeypatch.setattr(interrupts, "handled", swallowed_at_start)
    cut = helpers.invoke(*args)
    assert cut.exit_code == 130 and "--resume" in cut.output, cut.output
    monkeypatch.setattr(interrupts, "handled", real)
    resumed = helpers.invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["n"] == 8
