"""What a new user and a red team broke (issue 20, items 2-6): every case fails in one readable line, never
writes over what is not advssm's, and every printed number says on which examples it was measured."""
import dataclasses
import errno
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from advssm.cli.experiment import cell_folder, jobs
from advssm.cli.experiment.executor_spec import ExecutorSpec
from advssm.cli.results import table
from safetensors.torch import load_file, save_file


def _files(folder):
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and "Traceback" not in result.output, result.output
    return lines[-1]


# -- item 2: never overwrite what is not ours -------------------------------------------------------------------

class FullDisk:
    """A file opened for writing on a full disk: every write fails as the OS says it (ENOSPC)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_run_out_into_a_folder_that_is_not_a_run_folder_is_refused(tmp_path, helpers):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    result = helpers.invoke("run", *helpers.TINY, "--out", mine)
    assert result.exit_code == 2, result.output
    assert f"--out {mine} is an existing folder that is not an advssm run folder" in _one_line(result)
    assert (mine / "report.md").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["report.md"]


def test_report_with_out_writes_only_under_out(tiny_run, tmp_path, helpers):
    before = _files(tiny_run)
    out = tmp_path / "comparison"
    result = helpers.invoke("report", tiny_run, "--out", out)
    assert result.exit_code == 0, result.output
    assert _files(tiny_run) == before  # no accuracy.png rewritten into the source cells
    assert (out / "report.md").is_file() and (out / "accuracy.png").is_file()


def test_report_refuses_a_report_md_it_did_not_write(tiny_run, tmp_path, helpers):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("# my own report")
    result = helpers.invoke("report", tiny_run, "--out", out)
    assert result.exit_code == 2 and "holds report.md that advssm did not write" in _one_line(result)
    assert (out / "report.md").read_text() == "# my own report"


def test_eval_writes_robustbench_where_told_and_prints_the_result_when_it_cannot(tiny_run, tmp_path, helpers,
                                                                              monkeypatch):
    ckpt = tmp_path / "best.safetensors"
    shutil.copy(tiny_run / "pgd-at" / "best.safetensors", ckpt)
    there = tmp_path / "out" / "rb.json"
    result = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--no-progress", "--json", "--robustbench", there)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["robustbench_file"] == str(there) and there.is_file()
    assert not ckpt.with_suffix(".robustbench.json").exists()

    import advssm.ssm_layers.checkpoint as checkpoint

    real = checkpoint.atomic_write

    def read_only(path, data):
        if str(path).endswith(".robustbench.json"):
            raise OSError(errno.EROFS, "Read-only file system")
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", read_only)
    result = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--no-progress", "--json")
    assert result.exit_code == 1
    printed = json.loads(result.output[:result.output.rindex("}") + 1])  # the result first, then the error
    assert printed["robust_acc"]["fgsm"] is not None and printed["robustbench_file"] is None
    assert "the evaluation finished (its result is printed above) but" in _one_line(result)
    assert "Read-only file system" in _one_line(result) and "--robustbench PATH" in _one_line(result)


def test_two_evals_of_one_checkpoint_do_not_share_its_records(tiny_run, tmp_path, helpers):
    ckpt = tmp_path / "best.safetensors"
    shutil.copy(tiny_run / "pgd-at" / "best.safetensors", ckpt)
    records = ckpt.with_suffix(".eval.jsonl")
    with jobs.file_lock(records, "advssm eval (the other one)"):
        result = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--no-progress")
    assert result.exit_code == 1
    assert f"{records} is being written by another advssm command (advssm eval (the other one)" in _one_line(result)
    assert helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--no-progress").exit_code == 0  # released


# -- item 3: validate everything before the first cell trains ---------------------------------------------------

def test_a_missing_data_set_of_a_later_cell_fails_before_any_cell_trains(tmp_path, helpers):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\ndataset = ["digits", "mnist"]\nmethod = ["standard"]\n'
                    f'[data]\ndata_dir = "{tmp_path / "no-data"}"\ntrain_size = 64\ntest_size = 32\n'
                    '[model]\nd_model = 8\nd_state = 4\nn_layers = 1\n[train]\nepochs = 1\n')
    result = helpers.invoke("sweep", grid, "--no-progress", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "cell mnist-standard: MNIST not found" in _one_line(result) and "(nothing was trained)" in _one_line(result)
    assert not (tmp_path / "run" / "digits-standard").exists()


# -- item 4: trust nothing in a checkpoint's metadata -----------------------------------------------------------

def _tampered(tiny_run, tmp_path, change):
    source = tiny_run / "pgd-at" / "best.safetensors"
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata())
    user = json.loads(meta["user"])
    change(user["cell"])
    meta["user"] = json.dumps(user)
    path = tmp_path / "tampered.safetensors"
    save_file(load_file(str(source)), str(path), metadata=meta)
    return path


def test_a_tampered_cell_spec_is_validated_as_run_validates_flags(tiny_run, tmp_path, helpers):
    ckpt = _tampered(tiny_run, tmp_path, lambda cell: cell["train"].update(eps=5))
    result = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--no-progress")
    assert result.exit_code == 2
    assert f"the cell spec stored in {ckpt} is invalid: invalid setting: train.eps must be in (0, 1]" in result.output

    ckpt = _tampered(tiny_run, tmp_path, lambda cell: cell["train"].update(bogus=1))
    result = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--no-progress")
    assert result.exit_code == 2 and "unknown key 'train.bogus'" in _one_line(result)
    assert "pydantic" not in result.output and "validation error" not in result.output


def test_no_hint_sends_users_to_install_an_unpublished_package():
    """advssm's packages are not on PyPI: a `pip install advssm-...` hint invites a dependency-confusion attack."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    sources = [p for d in ("packages", "benchmarks", "docs") for p in (root / d).rglob("*")
               if p.suffix in (".py", ".md") and "tests" not in p.parts]
    offenders = [f"{p.relative_to(root)}: {m.group(0)}" for p in sources
                 for m in re.finditer(r"pip install ['\"]?advssm-[\w\[\]-]*", p.read_text(errors="replace"))]
    assert not offenders, offenders


# -- item 5: one clear line for each raw error -------------------------------------------------------------------

def test_a_binary_file_given_as_toml_is_named(tmp_path, helpers):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    result = helpers.invoke("run", binary, "--dry-run")
    assert result.exit_code == 2 and f"{binary} is not a TOML file" in _one_line(result)


@pytest.mark.parametrize("device, message", [
    ("tpu", "invalid --device 'tpu': choose cpu, cuda or cuda:N"),
    ("cuda", "--device cuda: CUDA is not available here"),
])
def test_eval_device_errors(tiny_run, helpers, device, message):
    if device == "cuda" and torch.cuda.is_available():
        message = "--device cuda:99: this machine has"
        device = "cuda:99"
    result = helpers.invoke("eval", tiny_run / "pgd-at" / "best.safetensors", "--device", device, "--no-progress")
    assert result.exit_code == 2 and message in _one_line(result), result.output


def test_a_300_character_run_name_is_refused(helpers):
    result = helpers.invoke("run", "--name", "a" * 300, "--dry-run")
    assert result.exit_code == 2 and "(300 characters): at most 100" in _one_line(result)


def test_a_model_too_large_for_the_machine_is_refused_before_allocating(helpers):
    result = helpers.invoke("run", "--d-state", str(10**9), "--dry-run")
    assert result.exit_code == 2
    assert "for its weights, gradients and AdamW state, more than this machine's" in _one_line(result)


def test_10000_layers_validate_without_building_them(monkeypatch, helpers):
    """The spec builds two blocks (every block is built alike) after sizing all of them on the meta device."""
    import advssm.cli.experiment.spec as spec  # the spec's model check builds through its build_model

    built = []
    real = spec.build_model
    monkeypatch.setattr(spec, "build_model", lambda config: built.append(config.n_layers) or real(config))
    result = helpers.invoke("run", "--n-layers", "10000", "--d-model", "8", "--d-state", "4", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "n_layers = 10000" in result.output and built and max(built) == 2


def test_a_checkpoint_is_refused_on_inputs_of_another_size(tiny_run, helpers):
    ckpt = tiny_run / "pgd-at" / "best.safetensors"
    result = helpers.invoke("eval", ckpt, "--dataset", "digits28", "--attacks", "fgsm", "--no-progress")
    assert result.exit_code == 2
    assert "was trained on inputs of shape 1x8x8, but these examples are 1x28x28" in _one_line(result)


@pytest.mark.parametrize("damaged", ["summary.json", "cell.json", "final_eval.json"])
def test_a_damaged_json_file_of_a_run_folder_is_named(tiny_run, tmp_path, helpers, damaged):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "pgd-at" / damaged).write_text('{"best": ')
    result = helpers.invoke("report", run, "--out", tmp_path / "out")
    if damaged == "cell.json":  # report does not read it; status reads each cell's own spec, and names it
        status = helpers.invoke("status", run)
        assert status.exit_code == 1 and f"{run / 'pgd-at' / damaged} is damaged (JSONDecodeError" in _one_line(status)
        result = helpers.invoke("eval", run / "pgd-at" / "best.safetensors", "--no-progress", "--attacks", "fgsm")
        assert result.exit_code == 0  # the checkpoint carries its own cell spec
        return
    assert result.exit_code == 1
    assert f"{run / 'pgd-at' / damaged} is damaged (JSONDecodeError" in _one_line(result)


def test_a_full_disk_while_writing_the_training_state_names_the_file(tmp_path, monkeypatch):
    """torch.save's own writer said only "[enforce fail at inline_container.cc:672] . unexpected pos"."""
    import advssm.adv_train.atomic as atomic  # the one writer of every file of the run
    from advssm.adv_train import TrainConfig, Trainer
    from torch.utils.data import TensorDataset

    real_save, real_open = torch.save, open

    def torch_save(obj, f, *args, **kwargs):
        if isinstance(f, str):  # torch's file writer on a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if "train_state.pt" in str(path) and ("w" in mode or "x" in mode) else f

    monkeypatch.setattr(atomic.torch, "save", torch_save)
    monkeypatch.setattr(atomic, "open", full_open, raising=False)
    data = TensorDataset(torch.rand(8, 4, 1), torch.arange(8) % 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    config = TrainConfig(method="standard", epochs=1, batch_size=8, eval_pgd_steps=1, aa_every=0)
    trainer = Trainer(model, data, data, config, out_dir=tmp_path, callbacks=[SimpleNamespace()])
    with pytest.raises(OSError, match=r"no space left on the device holding .*train_state\.pt: free some space"):
        trainer.fit()


def test_a_full_disk_while_writing_a_plot_names_the_file(tmp_path, monkeypatch):
    import advssm.ssm_layers.checkpoint as checkpoint
    from advssm.cli.results.plots import plot_comparison

    real_open = open

    monkeypatch.setattr(checkpoint, "open", lambda path, mode="r", *a, **k: FullDisk(real_open(path, mode, *a, **k)),
                        raising=False)
    path = tmp_path / "accuracy.png"
    with pytest.raises(OSError, match=f"no space left on the device holding {path}"):
        plot_comparison({"a": [{"epoch": 1, "clean_acc": 0.5, "pgd_acc": 0.2}]}, path)
    assert not path.exists() and not list(tmp_path.iterdir())  # no half-written PNG, no temporary file


# -- item 6: numbers that agree ------------------------------------------------------------------------------------

def test_the_epoch_line_says_on_which_examples():
    from advssm.cli.progress import epoch_line, evaluated_on

    trainer = SimpleNamespace(config=SimpleNamespace(eval_n=None, aa_n=200), test_set=range(450))
    line = epoch_line({"train_loss": 0.4, "clean_acc": 0.956, "pgd_acc": 0.4, "aa_acc": 0.3},
                      {"clean_acc": 0.9, "pgd_acc": 0.5, "n": 256}, evaluated_on(trainer))
    assert "train set (first 256) clean 90.0% PGD 50.0%" in line
    assert "test (first 450) clean 95.6% PGD 40.0%" in line and "test AA (first 200) 30.0%" in line


def test_run_prints_on_which_examples_its_table_is(tiny_run, helpers):
    rows = [(name, cell_folder.read_summary(tiny_run / name)) for name in ("standard", "pgd-at")]
    notes = table.table_notes(rows)
    assert notes[0].startswith("Numbers: clean and PGD-2 (eps 0.1), and AA, on the same first 8 test examples")


def test_warnings_are_printed_under_the_table_too():
    rows = [("pgd-at", {"final_eval": None, "warnings": ["final evaluation of best: Square (black-box) broke 3 "
                                                          "examples the gradient attacks did not: gradient masking?"]})]
    notes = "\n".join(table.table_notes(rows))
    assert "warning (pgd-at): final evaluation of best: Square (black-box) broke 3" in notes


def test_status_uses_the_tables_rule_for_best(tiny_run, tmp_path):
    cell = tmp_path / "pgd-at"
    shutil.copytree(tiny_run / "pgd-at", cell)
    (cell / cell_folder.FINAL_EVAL_FILE).unlink()  # not complete: the rule picks the epoch, as the trainer does
    rows = [{"epoch": 1, "clean_acc": 0.9, "pgd_acc": 0.1}, {"epoch": 2, "clean_acc": 0.5, "pgd_acc": 0.3},
            {"epoch": 3, "clean_acc": 0.6, "pgd_acc": 0.2}]
    (cell / cell_folder.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = cell_folder.read_cell(cell)
    by_clean = spec.model_copy(update={"train": dataclasses.replace(spec.train, select_by="clean")})
    cell_folder.write_cell(cell, by_clean)
    assert cell_folder.read_progress(cell)["best_pgd_acc"] == 0.1  # epoch 1, the best clean; not the max 0.3
    cell_folder.write_cell(cell, spec)  # select_by pgd
    assert cell_folder.read_progress(cell)["best_pgd_acc"] == 0.3
    # complete: the final evaluation's Best, the table's number
    assert cell_folder.read_progress(tiny_run / "pgd-at")["best_pgd_acc"] == \
        cell_folder.read_summary(tiny_run / "pgd-at")["best"]["pgd_acc"]


def test_report_marks_a_cell_whose_final_evaluation_was_killed(tiny_run, tmp_path, helpers):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "pgd-at" / cell_folder.FINAL_EVAL_FILE).unlink()
    result = helpers.invoke("report", run, "--out", tmp_path / "out", "--html")
    assert result.exit_code == 0, result.output
    assert "| pgd-at (unfinished) |" in result.output and "| standard |" in result.output
    why = "pgd-at: unfinished: trained, but its final evaluation has not finished"
    assert why in (tmp_path / "out" / "report.md").read_text()
    assert why in result.output  # the terminal says what report.md says
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('class="unfinished"') == 1 and '>pgd-at</a> <span class="unfinished"' in page


def test_the_resume_hint_under_torchrun_names_torchrun(monkeypatch):
    from advssm.cli.commands._launch import resume_command

    one = SimpleNamespace(active=False, world_size=1)
    assert resume_command("run", "runs/x", one) == "advssm run --resume runs/x"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    two = SimpleNamespace(active=True, world_size=2)
    assert resume_command("run", "runs/x", two) == "torchrun --nproc-per-node 2 -m advssm.cli run --resume runs/x"


def test_the_nan_stop_says_what_to_try(tmp_path, helpers, monkeypatch):
    from advssm.adv_train import methods

    def diverge(self, ctx, x, y):
        raise methods.NonFiniteLossError(float("nan"), ctx.epoch, 0)

    monkeypatch.setattr(methods.METHODS["standard"], "train_step", diverge)
    result = helpers.invoke("run", *helpers.TINY, "--method", "standard", "--out", tmp_path / "run")
    assert result.exit_code == 1
    line = _one_line(result)
    assert f"advssm run --resume {tmp_path / 'run'} --lr 0.001" in line
    assert "No setting is known to fix every case" in line
    assert "no epoch had finished: train the cell again from the start" in line  # the NaN came in epoch 1


def test_the_local_executor_honours_omp_num_threads(monkeypatch):
    from advssm.cli.execution.submission import job_threads

    settings = ExecutorSpec(kind="local", max_parallel=2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert job_threads(settings, n_cells=4, cores=16) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert job_threads(settings, n_cells=4, cores=16) == 8


@pytest.mark.slow
def test_killing_the_printed_job_id_of_a_local_cell_stops_the_cell(tmp_path, sweeps):
    """The job id is submitit's controller: SIGTERM reached the cell, whose submitit handler only logged it, and a
    controller killed with SIGKILL left the cell training on as an orphan."""
    import os
    import signal

    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nmethod = ["standard"]\n[data]\ntrain_size = 64\ntest_size = 32\n'
                    '[model]\nd_model = 8\nd_state = 4\nn_layers = 1\n[train]\nepochs = 400\nbatch_size = 32\n')
    out = tmp_path / "run"
    for signum in (signal.SIGTERM, signal.SIGKILL):
        result = sweeps.invoke("sweep", grid, "--out", out, "--executor", "local", "--no-progress")
        assert result.exit_code == 0, result.output
        record = jobs.read_record(out, "standard")
        controller = int(record["job_id"])
        assert f"standard: job {controller}" in result.output
        sweeps.wait_until(lambda: jobs.read_record(out, "standard").get("state") == "running"
                          and cell_folder.read_metrics(out / "standard"), what="the cell training")
        cell_pid = jobs.read_record(out, "standard")["pid"]
        os.kill(controller, signum)
        sweeps.wait_until(lambda pid=cell_pid: not jobs.pid_alive(pid), timeout_s=60, what="the cell to stop")
        assert "interrupted" in jobs.read_record(out, "standard")["error"]
        assert len(cell_folder.read_metrics(out / "standard")) < 400
