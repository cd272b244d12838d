"""`advssm run` end to end on tiny settings: the run folder, interruption + resume, and determinism."""
import json

import advssm.cli.experiment.cell_runner as cell_runner
import pytest
import tomllib
from advssm.cli.experiment import cell_folder
from advssm.cli.experiment.train_eval import TrainSetEval
from advssm.cli.progress import TqdmProgress


def test_run_writes_the_run_folder(tiny_run):
    config = tomllib.loads((tiny_run / "config.toml").read_text())
    assert config["grid"]["method"] == ["standard", "pgd-at"] and config["train"]["epochs"] == 2
    report = (tiny_run / "report.md").read_text()
    # TINY runs 2 PGD steps: the column says so instead of the paper's PGD-10
    assert "| standard |" in report and "| pgd-at |" in report and "Best PGD-2" in report and "Diff AA" in report
    # one row, one set of examples (issue 11: the row's clean and PGD came from 32 examples, its AA from 8), and the
    # demo's reduced AutoAttack includes the black-box Square at a labelled query budget (issue 15)
    assert "Protocol: clean and PGD-2 (eps 0.1), and AA, on the same first 8 test examples; AA: a reduced " \
        "AutoAttack (APGD-CE 2 steps, APGD-DLR 2 steps, SQUARE 100 queries)." in report
    assert "Best (standard): the epoch with the highest clean accuracy on the test set" in report
    assert "Best (pgd-at): the epoch with the highest PGD-2 accuracy on the test set" in report
    assert (tiny_run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    for cell in ("standard", "pgd-at"):
        cell_dir = tiny_run / cell
        for name in ("best.safetensors", "last.safetensors", "metrics.jsonl", "summary.json", "train_eval.jsonl",
                     "cell.json", "final_eval.json", "final_eval_best.jsonl", "environment.json"):
            assert (cell_dir / name).is_file(), name
        assert (cell_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
        metrics = cell_folder.read_metrics(cell_dir)
        assert [m["epoch"] for m in metrics] == [1, 2]
        summary = cell_folder.read_summary(cell_dir)
        for stage in ("best", "last"):
            assert 0 <= summary[stage]["clean_acc"] <= 1 and 0 <= summary[stage]["pgd_acc"] <= 1
            assert 0 <= summary[stage]["aa_acc"] <= summary[stage]["clean_acc"]  # on the same 8 examples
        parts = [{"name": "apgd-ce", "steps": 2, "restarts": 1}, {"name": "apgd-dlr", "steps": 2, "restarts": 1},
                 {"name": "square", "queries": 100, "restarts": 1}]
        assert summary["final_eval"] == {"aa": "custom", "attacks": ["apgd-ce", "apgd-dlr", "square"], "steps": 2,
                                         "n": 8, "components": parts, "eps": 0.1, "pgd_steps": 2, "test_n": 32}
        assert summary["selection"]["by"] == ("clean" if cell == "standard" else "pgd")
        train_set = [json.loads(line) for line in (cell_dir / "train_eval.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in train_set] == [1, 2] and all(row["n"] == 64 for row in train_set)
        assert all(0 <= row["pgd_acc"] <= row["clean_acc"] <= 1 for row in train_set)
        assert summary["diff"]["pgd_acc"] == pytest.approx(summary["best"]["pgd_acc"] - summary["last"]["pgd_acc"])
        # the table shows the summary's numbers as percentages
        assert f"{100 * summary['last']['clean_acc']:.2f}" in report


def test_checkpoint_reloads_to_the_trained_model(tiny_run):
    from advssm.ssm_layers import load_checkpoint

    model, meta = load_checkpoint(tiny_run / "pgd-at" / "last.safetensors")
    assert model.config.d_model == 8 and model.config.n_layers == 1 and model.config.d_input == 1


class _InterruptAfterFirstEpoch(TqdmProgress):
    def on_epoch_end(self, trainer, epoch, metrics):
        super().on_epoch_end(trainer, epoch, metrics)
        if epoch == 1 and self.label == "pgd-at":
            raise KeyboardInterrupt


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch, helpers, tiny_run):
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(cell_runner, "TqdmProgress", _InterruptAfterFirstEpoch)
        result = helpers.invoke("run", *helpers.TINY, "--out", out)
    assert result.exit_code == 130, result.output
    assert f"advssm run --resume {out}" in result.output
    assert cell_folder.is_finished(out / "standard") and not cell_folder.is_finished(out / "pgd-at")
    assert len(cell_folder.read_metrics(out / "pgd-at")) == 1

    result = helpers.invoke("run", "--resume", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "standard: finished, skipped" in result.output
    for cell in ("standard", "pgd-at"):  # same seed, same numbers: the resumed run continues exactly
        assert helpers.metrics(out / cell) == helpers.metrics(tiny_run / cell)
    assert json.loads((out / "pgd-at" / "summary.json").read_text()) == \
        json.loads((tiny_run / "pgd-at" / "summary.json").read_text())
    assert (out / "pgd-at" / "train_eval.jsonl").read_text() == (tiny_run / "pgd-at" / "train_eval.jsonl").read_text()


class _InterruptLastTrainSetEval(TrainSetEval):
    """Ctrl-C in the middle of the train-set evaluation after the standard cell's last epoch."""

    def measure(self, trainer, epoch):
        if epoch == trainer.config.epochs and trainer.config.method == "standard" and epoch not in self.rows:
            raise KeyboardInterrupt
        super().measure(trainer, epoch)


def test_interrupt_in_train_set_eval_is_filled_on_resume(tmp_path, monkeypatch, helpers, tiny_run):
    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(cell_runner, "TrainSetEval", _InterruptLastTrainSetEval)
        result = helpers.invoke("run", *helpers.TINY, "--method", "standard", "--out", out)
    assert result.exit_code == 130, result.output
    assert len(cell_folder.read_metrics(out / "standard")) == 2 and not cell_folder.is_finished(out / "standard")
    assert len((out / "standard" / "train_eval.jsonl").read_text().splitlines()) == 1
    result = helpers.invoke("run", "--resume", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert (out / "standard" / "train_eval.jsonl").read_text() == \
        (tiny_run / "standard" / "train_eval.jsonl").read_text()
    assert cell_folder.read_summary(out / "standard") == cell_folder.read_summary(tiny_run / "standard")


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, helpers, tiny_run):
    """Reproducibility: a second run with the run's seed gives identical metrics, summaries and weights."""
    from safetensors.torch import load_file

    again = tmp_path / "again"
    assert helpers.invoke("run", *helpers.TINY, "--out", again).exit_code == 0
    for cell in ("standard", "pgd-at"):
        assert helpers.metrics(again / cell) == helpers.metrics(tiny_run / cell)
        assert cell_folder.read_summary(again / cell) == cell_folder.read_summary(tiny_run / cell)
        assert (again / cell / "train_eval.jsonl").read_text() == (tiny_run / cell / "train_eval.jsonl").read_text()
        for name in ("best.safetensors", "last.safetensors"):
            mine, theirs = load_file(again / cell / name), load_file(tiny_run / cell / name)
            assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)
    other = tmp_path / "other"
    assert helpers.invoke("run", *helpers.TINY, "--method", "standard", "--seed", "1", "--out", other).exit_code == 0
    assert helpers.metrics(other / "standard") != helpers.metrics(tiny_run / "standard")


def test_resume_refuses_other_settings(tiny_run, helpers):
    result = helpers.invoke("run", "--resume", tiny_run, "--epochs", "3")
    assert result.exit_code == 2 and "drop the config file and the other settings" in result.output


def test_out_folder_of_another_experiment_is_refused(tiny_run, helpers):
    result = helpers.invoke("run", *helpers.TINY, "--epochs", "3", "--out", tiny_run)
    assert result.exit_code == 2 and "holds a different experiment" in result.output


def test_without_autoattack_aa_is_null_and_shown_as_dash(tmp_path, helpers):
    out = tmp_path / "no-aa"
    result = helpers.invoke("run", *helpers.TINY, "--method", "standard", "--epochs", "1", "--set", "eval.aa=false",
                            "--set", "eval.train_n=0", "--out", out)
    assert result.exit_code == 0, result.output
    summary = cell_folder.read_summary(out / "standard")
    assert summary["best"]["aa_acc"] is None and summary["last"]["aa_acc"] is None and summary["diff"]["aa_acc"] is None
    assert summary["final_eval"]["aa"] is None and cell_folder.is_complete(out / "standard")
    assert not (out / "standard" / "train_eval.jsonl").exists()  # train_n = 0 turns the train-set curves off
    report = (out / "report.md").read_text()
    assert "AA: not run" in report
    row = next(line for line in report.splitlines() if line.startswith("| standard |"))
    assert row.split(" | ")[3] == "-" and row.rstrip(" |").endswith("-")  # Best AA ... Diff AA


def test_trainer_autoattack_is_labelled_as_the_trainers(tmp_path, helpers):
    out = tmp_path / "trainer-aa"
    result = helpers.invoke("run", *helpers.TINY, "--method", "standard", "--epochs", "1", "--set", "eval.aa=false",
                            "--set", "train.aa_every=1", "--set", "train.aa_n=8", "--set", "train.aa_version=custom",
                            "--set", "train.aa_attacks=['apgd-ce']", "--out", out)
    assert result.exit_code == 0, result.output
    summary = cell_folder.read_summary(out / "standard")
    assert summary["last"]["aa_acc"] is not None  # measured by the trainer in its last epoch
    assert summary["final_eval"]["aa"] == "trainer" and summary["final_eval"]["n"] == 8
    assert "AA: the trainer's AutoAttack (custom)" in (out / "report.md").read_text()


RAND_PARTS = [{"name": "apgd-ce", "steps": 100, "restarts": 1, "eot_iter": 20},
              {"name": "apgd-dlr", "steps": 100, "restarts": 1, "eot_iter": 20}]
RAND_LABEL = "AutoAttack rand (APGD-CE 100 steps x 20 EOT samples, APGD-DLR 100 steps x 20 EOT samples)"


def test_rand_autoattack_runs_in_the_final_evaluation_and_is_labelled(tmp_path, helpers):
    """eval.aa_version = "rand": AutoAttack's version for randomised models, at its fixed budget (the custom list and
    steps of TINY are for "custom" only), named with its EOT samples in the summary and the report."""
    out = tmp_path / "rand"
    result = helpers.invoke("run", *helpers.TINY, "--method", "standard", "--epochs", "1", "--set", "eval.train_n=0",
                            "--set", "eval.aa_n=4", "--set", "eval.aa_version=rand", "--out", out)
    assert result.exit_code == 0, result.output
    summary = cell_folder.read_summary(out / "standard")
    assert summary["final_eval"] == {"aa": "rand", "n": 4, "components": RAND_PARTS, "eps": 0.1, "pgd_steps": 2,
                                     "test_n": 32}
    assert f"on the same first 4 test examples; AA: {RAND_LABEL}." in (out / "report.md").read_text()
    # it ran: per clean-correct example, APGD-CE's random start and 100 steps of 20 forward-backward samples each,
    # then APGD-DLR's on those APGD-CE left unbroken
    final = json.loads((out / "standard" / "final_eval.json").read_text())["stages"]["best"]
    records = [json.loads(line) for line in (out / "standard" / "final_eval_best.jsonl").read_text().splitlines()]
    correct = sum(r["clean_correct"] for r in records)
    left = correct - sum(r["broken_by"] == "apgd-ce" for r in records)
    assert correct > 0 and final["backward_passes"]["aa"] == (1 + 100) * 20 * (correct + left)


def test_the_trainers_rand_autoattack_is_labelled_with_its_attacks():
    from advssm.cli.experiment.final_eval import describe, protocol
    from advssm.cli.experiment.spec import resolve_experiment

    cell = resolve_experiment({}, overrides={"eval.aa": False, "train.aa_every": 1, "train.aa_n": 8,
                                             "train.aa_version": "rand"}).cells()[0]
    assert cell.train.aa_version == "rand"
    final = protocol(cell, 8, 32, None)
    assert final["aa"] == "trainer" and final["version"] == "rand" and final["components"] == RAND_PARTS
    assert f"AA: the trainer's AutoAttack (rand: {RAND_LABEL[len('AutoAttack rand ('):-1]}) every" in describe(final)


def test_every_method_and_layer_trains_on_images(tmp_path, helpers):
    """One cell per training method and per layer on the digits images: the paper's grid at toy size.

    Guards the seams between packages, e.g. YOPO's first-layer protocol on image inputs (the first
    layer must take the images themselves, not the tokens made from them).
    """
    from advssm.adv_train.methods import METHODS
    from advssm.ssm_layers import LAYERS

    out = tmp_path / "grid"
    args = [*helpers.TINY, "--epochs", "1", "--method", ",".join(METHODS), "--set", "eval.aa=false", "--out", out]
    result = helpers.invoke("run", *args)
    assert result.exit_code == 0, result.output
    # cell folders are the ones with a cell.json (the run folder also holds the sweep machinery's jobs/ folder)
    assert sorted(p.name for p in out.iterdir() if (p / "cell.json").is_file()) == sorted(METHODS)
    grid = tmp_path / "layers.toml"
    grid.write_text("[grid]\nlayer = [" + ", ".join(f'"{name}"' for name in LAYERS) + "]\n")
    result = helpers.invoke("run", grid, *helpers.TINY, "--epochs", "1", "--method", "pgd-at", "--set", "eval.aa=false",
                    "--out", tmp_path / "layers")
    assert result.exit_code == 0, result.output


def test_progress_draws_bars_only_on_a_terminal(capsys):
    """In a log file (not a TTY) only the epoch lines appear, not carriage-return redraws of bars."""
    metrics = {"train_loss": 0.5, "clean_acc": 0.9, "pgd_acc": 0.4}
    trainer = type("T", (), {"config": type("C", (), {"epochs": 2})()})()
    for bars in (False, True):
        progress = TqdmProgress("cell", bars=bars)
        for i in range(3):
            progress.on_batch_end(trainer, 1, i, 3, {"loss": 1.0})
        progress.on_epoch_end(trainer, 1, metrics)
        err = capsys.readouterr().err
        assert "cell epoch 1/2: loss 0.500" in err and ("\r" in err) == bars
    assert TqdmProgress("cell", enabled=False, bars=True).bars is False
