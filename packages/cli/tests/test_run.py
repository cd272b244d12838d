"""`advssm run` end to end on tiny settings: the run folder, interruption + resume, and determinism."""
import json

import advssm.cli.experiment as experiment
import pytest
import tomllib
from advssm.cli import runs
from advssm.cli.progress import TqdmProgress


def test_run_writes_the_run_folder(tiny_run):
    config = tomllib.loads((tiny_run / "config.toml").read_text())
    assert config["grid"]["method"] == ["standard", "pgd-at"] and config["train"]["epochs"] == 2
    report = (tiny_run / "report.md").read_text()
    assert "| standard |" in report and "| pgd-at |" in report and "Best PGD-10" in report and "Diff AA" in report
    assert (tiny_run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    for cell in ("standard", "pgd-at"):
        cell_dir = tiny_run / cell
        for name in ("best.safetensors", "last.safetensors", "metrics.jsonl", "summary.json"):
            assert (cell_dir / name).is_file(), name
        assert (cell_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
        metrics = runs.read_metrics(cell_dir)
        assert [m["epoch"] for m in metrics] == [1, 2]
        summary = runs.read_summary(cell_dir)
        for stage in ("best", "last"):
            assert 0 <= summary[stage]["clean_acc"] <= 1 and 0 <= summary[stage]["pgd_acc"] <= 1
            assert 0 <= summary[stage]["aa_acc"] <= summary[stage]["clean_acc"] * 32 / 8  # AA on the first 8
        assert summary["final_eval"] == {"aa": "custom", "attacks": ["apgd-ce", "apgd-dlr"], "steps": 2, "n": 8}
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
        patch.setattr(experiment, "TqdmProgress", _InterruptAfterFirstEpoch)
        result = helpers.invoke("run", *helpers.TINY, "--out", out)
    assert result.exit_code == 130, result.output
    assert f"advssm run --resume {out}" in result.output
    assert runs.is_finished(out / "standard") and not runs.is_finished(out / "pgd-at")
    assert len(runs.read_metrics(out / "pgd-at")) == 1

    result = helpers.invoke("run", "--resume", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "standard: finished, skipped" in result.output
    for cell in ("standard", "pgd-at"):  # same seed, same numbers: the resumed run continues exactly
        assert helpers.metrics(out / cell) == helpers.metrics(tiny_run / cell)
    assert json.loads((out / "pgd-at" / "summary.json").read_text()) == \
        json.loads((tiny_run / "pgd-at" / "summary.json").read_text())


def test_resume_refuses_other_settings(tiny_run, helpers):
    result = helpers.invoke("run", "--resume", tiny_run, "--epochs", "3")
    assert result.exit_code == 2 and "drop the config file and the other settings" in result.output


def test_out_folder_of_another_experiment_is_refused(tiny_run, helpers):
    result = helpers.invoke("run", *helpers.TINY, "--epochs", "3", "--out", tiny_run)
    assert result.exit_code == 2 and "holds a different experiment" in result.output
