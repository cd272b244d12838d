"""Trackers: ``advssm run --tracker NAME``; the results read back with each tool's own reader."""
import json
import sys
from pathlib import Path

import pytest
from advssm.cli.execution import cell_job
from advssm.cli.experiment import cell_folder, trackers
from advssm.cli.experiment.spec import resolve_experiment


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """The tiny two-cell run logged to TensorBoard and MLflow."""
    sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the tiny settings of conftest
    from conftest import TINY, invoke

    out = tmp_path_factory.mktemp("tracked") / "run"
    result = invoke("run", *TINY, "--out", out, "--tracker", "tensorboard", "--tracker", "mlflow")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    return out


def test_tensorboard_event_files_hold_every_epoch(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for cell in ("standard", "pgd-at"):
        events = EventAccumulator(str(tracked_run / cell / "tensorboard"))
        events.Reload()
        metrics = cell_folder.read_metrics(tracked_run / cell)
        for key in ("clean_acc", "pgd_acc"):
            assert [(e.step, e.value) for e in events.Scalars(f"test/{key}")] == \
                [(m["epoch"], pytest.approx(m[key])) for m in metrics]
        summary = cell_folder.read_summary(tracked_run / cell)
        (best,) = events.Scalars("best/aa_acc")
        assert best.value == pytest.approx(summary["best"]["aa_acc"]) and best.step == summary["last"]["epoch"]
        assert "spec/text_summary" in events.Tags()["tensors"]


def test_mlflow_runs_hold_spec_metrics_and_files(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracked_run.name)  # one experiment per run folder
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(found) == ["pgd-at", "standard"]
    for name, run in found.items():
        cell = cell_folder.read_cell(tracked_run / name)
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["train.method"] == name and params["train.eps"] == str(cell.train.eps)
        assert params["model.layer"] == "s4d" and params["eval.aa_n"] == "8"
        history = client.get_metric_history(run.info.run_id, "test/pgd_acc")
        metrics = cell_folder.read_metrics(tracked_run / name)
        expected = [(m["epoch"], pytest.approx(m["pgd_acc"])) for m in metrics]
        assert sorted((m.step, m.value) for m in history) == expected
        summary = cell_folder.read_summary(tracked_run / name)
        assert run.data.metrics["last/pgd_acc"] == pytest.approx(summary["last"]["pgd_acc"])
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"best.safetensors", "last.safetensors", "summary.json", "final_eval.json", "cell.json"} <= files
        reports = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
        assert reports == {"report/report.md", "report/report.html", "report/accuracy.png"}
        local = client.download_artifacts(run.info.run_id, "summary.json", str(tracked_run / f"dl-{name}"))
        assert json.loads(open(local).read()) == json.loads((tracked_run / name / "summary.json").read_text())
    # artifacts live in the run folder, not the working directory's ./mlruns
    assert (tracked_run / "mlartifacts").is_dir()


def test_a_resumed_cell_continues_its_mlflow_run(tracked_run, tmp_path):
    """The trackers' run ids stay in the cell folder; a resumed cell appends to the same MLflow run."""
    import shutil

    from advssm.cli.experiment.trackers import STATE_FILE, Trackers
    from mlflow.tracking import MlflowClient

    state = json.loads((tracked_run / "pgd-at" / STATE_FILE).read_text())
    cell = cell_folder.read_cell(tracked_run / "pgd-at")
    copy = tmp_path / "again" / "pgd-at"
    shutil.copytree(tracked_run / "pgd-at", copy)
    resumed = Trackers(cell.model_copy(update={"track": cell.track.model_copy(update={"trackers": ["mlflow"],
                       "mlflow_uri": state["mlflow"]["uri"]})}), copy)
    assert resumed.active[0].run_id == state["mlflow"]["run_id"]
    resumed.on_epoch_end(None, 3, {"epoch": 3, "pgd_acc": 0.5})
    resumed.close()
    client = MlflowClient(tracking_uri=state["mlflow"]["uri"])
    steps = [m.step for m in client.get_metric_history(state["mlflow"]["run_id"], "test/pgd_acc")]
    assert sorted(steps) == [1, 2, 3]


def test_a_tracker_that_is_not_installed_stops_before_training(tmp_path, helpers, monkeypatch):
    monkeypatch.setitem(trackers.MODULES, "mlflow", {"mlflow": "mlflow", "advssm_tests_no_such_module": "sqlalchemy"})
    out = tmp_path / "run"
    for args in (["--dry-run"], ["--out", out]):
        result = helpers.invoke("run", *helpers.TINY, "--tracker", "mlflow", *args)
        assert result.exit_code == 2, result.output
        assert "tracker mlflow not installed: pip install sqlalchemy (or drop --tracker mlflow" in result.output
    assert not out.exists()  # nothing trained, no folder left
    toml = tmp_path / "exp.toml"
    toml.write_text('[track]\ntrackers = ["tensorboard", "mlflow"]\n')
    result = helpers.invoke("run", toml, "--dry-run")
    assert result.exit_code == 2 and "tracker mlflow not installed" in result.output


def test_tracker_settings_are_checked_and_written(helpers):
    spec = resolve_experiment({"track": {"trackers": ["tensorboard"]}}, {"track.mlflow_uri": "sqlite:///x.db"})
    assert spec.cells()[0].track.trackers == ["tensorboard"] and "[track]" in spec.to_toml()
    assert "[track]" not in resolve_experiment({}).to_toml()  # written only where given
    result = helpers.invoke("run", "--tracker", "tensorbord", "--dry-run")
    assert result.exit_code == 2 and "tensorbord" in result.output
    result = helpers.invoke("run", "--set", "track.trackers=['mlfow']", "--dry-run")
    assert result.exit_code == 2 and "did you mean 'mlflow'" in result.output
    dry = helpers.invoke("run", "--tracker", "tensorboard", "--tracker", "mlflow", "--dry-run", "--json")
    assert json.loads(dry.stdout)["track"]["trackers"] == ["tensorboard", "mlflow"]



def test_sweep_takes_the_tracker_flag_too(tmp_path, helpers):
    """--tracker was a flag of run only: a sweep could log to a tracker through the TOML's [track] table alone."""
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nlayer = ["s4d", "s6"]\n[track]\ntrackers = ["mlflow"]\n')
    dry = helpers.invoke("sweep", grid, "--tracker", "tensorboard", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["track"]["trackers"] == ["tensorboard"]  # the flag replaces the table's list


def test_a_tracker_failing_mid_run_warns_once_and_training_goes_on(tmp_path, helpers, monkeypatch, capfd):
    calls = []

    def broken(self, epoch, metrics):
        calls.append(epoch)
        raise OSError("disk full")

    monkeypatch.setattr(trackers.TensorBoardTracker, "log_epoch", broken)
    out = tmp_path / "run"
    result = helpers.invoke("run", *helpers.TINY, "--method", "standard", "--out", out, "--tracker", "tensorboard")
    assert result.exit_code == 0, result.output
    err = capfd.readouterr().err + result.output
    assert err.count("tracker tensorboard failed") == 1 and "disk full" in err and "training continues" in err
    assert calls == [1]  # dropped after its first failure
    assert cell_folder.is_complete(out / "standard") and len(cell_folder.read_metrics(out / "standard")) == 2


def test_wandb_offline_run_in_the_run_folder(tmp_path, helpers, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    result = helpers.invoke("run", *helpers.TINY, "--method", "standard", "--out", out, "--tracker", "wandb")
    assert result.exit_code == 0, result.output
    state = json.loads((out / "standard" / trackers.STATE_FILE).read_text())["wandb"]
    folder = Path(state["dir"])
    assert folder.parent == (out / "wandb").resolve() and folder.name.startswith("offline-run-")
    assert (folder / f"run-{state['id']}.wandb").stat().st_size > 0
    assert json.loads((folder / "files" / "summary.json").read_text()) == \
        json.loads((out / "standard" / "summary.json").read_text())


def test_a_sweep_job_adds_the_rewritten_report_to_the_mlflow_runs(tracked_run):
    """Under the local / Slurm executors each finishing job rewrites the sweep's report and logs it to the runs."""
    import shutil
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracked_run.name)
    found = client.search_runs([experiment.experiment_id])
    for run in found:
        shutil.rmtree(Path(urlparse(run.info.artifact_uri).path) / "report")
        assert client.list_artifacts(run.info.run_id, "report") == []
    cell_job.CellJob(str(tracked_run), "local", 0, None)._report()
    for run in found:
        assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} == {
            "report/report.md", "report/report.html", "report/accuracy.png"}
