"""Experiment trackers: each cell's spec, per-epoch metrics, final numbers and files in TensorBoard, MLflow or W&B.

Chosen with ``advssm run --tracker NAME`` (repeatable) or the TOML's ``[track]`` table (``spec.TrackSpec``);
each an optional extra of advssm-cli (tensorboard; mlflow = mlflow-skinny, sqlalchemy, alembic; wandb). What each gets:

- tensorboard: event files in ``<cell>/tensorboard``: every numeric per-epoch metric (``test/pgd_acc``,
  ``train/loss`` ...) at its epoch, the final ``best/``, ``last/`` and ``diff/`` numbers, the spec as text.
- mlflow: one MLflow run per cell (named after it) in the experiment ``track.mlflow_experiment`` (default: the
  run folder's name) of the store ``track.mlflow_uri`` (default: ``sqlite:///<run>/mlflow.db``, artifacts in
  ``<run>/mlartifacts``): the cell spec as params, the metrics per epoch, the final numbers, the checkpoints and
  the cell's JSON files as artifacts, and the run's report.md / report.html once written.
- wandb: one offline W&B run per cell (``WANDB_MODE=offline``) under ``<run>/wandb``, grouped by run folder:
  the spec as config, the metrics per epoch, the final numbers as its summary and the cell's files saved.

A tracker that is not installed is a ``ConfigError`` before anything trains (``check_installed``, called
when the experiment is resolved). A tracker that fails while a cell trains warns once, is switched off for
that cell, and never stops the training. A resumed cell continues its MLflow and W&B runs (their ids are kept
in ``<cell>/trackers.json``).

    trackers = open_trackers(cell, cell_dir)            # None when the cell names none
    trainer = Trainer(..., callbacks=[..., trackers])   # on_epoch_end logs each epoch
    trackers.finish(summary)                            # final numbers and files; then trackers.close()
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from ..files import write_json
from . import cell_folder, run_folder
from .run_folder import REPORT_HTML

STATE_FILE = "trackers.json"  # in the cell folder: the MLflow run id and W&B run id, for a resume
# tracker -> {module it imports: the pip package that provides it}; MLflow's SQLite store needs SQLAlchemy and Alembic
MODULES = {"tensorboard": {"tensorboard": "tensorboard"},
           "mlflow": {"mlflow": "mlflow-skinny", "sqlalchemy": "sqlalchemy", "alembic": "alembic"},
           "wandb": {"wandb": "wandb"}}
FINAL_KEYS = ("clean_acc", "pgd_acc", "aa_acc")
# the cell folder's files each run logs (names from the folder's owners: adv_train.store and cell_folder)
ARTIFACTS = (*(cell_folder.checkpoint(".", stage).name for stage in cell_folder.CHECKPOINTS), cell_folder.SUMMARY_FILE,
             cell_folder.FINAL_EVAL_FILE, cell_folder.CELL_FILE, cell_folder.METRICS_FILE, cell_folder.TRAIN_EVAL_FILE,
             cell_folder.ENVIRONMENT_FILE)
REPORTS = (run_folder.REPORT_FILE, REPORT_HTML, run_folder.PLOT_FILE)  # the run's reports each cell's run logs


def check_installed(names) -> None:
    """Raise one ConfigError naming every chosen tracker that is not installed here, and how to install it."""
    missing = {name: [pip for module, pip in MODULES[name].items() if importlib.util.find_spec(module) is None]
               for name in names}
    missing = {name: pips for name, pips in missing.items() if pips}
    if missing:
        raise ConfigError(f"tracker{'s' if len(missing) > 1 else ''} {', '.join(missing)} not installed: "
                          f"pip install {' '.join(p for pips in missing.values() for p in pips)} (or drop --tracker "
                          f"{next(iter(missing))} / [track] trackers)")


def _numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``values`` (None, NaN and non-numbers left out), keys prefixed."""
    return {prefix + k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _epoch_metrics(metrics: dict) -> dict[str, float]:
    """``test/clean_acc``, ``train/loss`` ...: the trainer's per-epoch metrics by where they were measured."""
    out = {}
    for key, value in _numbers(metrics).items():
        if key == "epoch":
            continue
        if key.endswith("_time"):
            out["time/" + key] = value
        elif key.startswith("train_"):
            out["train/" + key[len("train_"):]] = value
        elif key.endswith("_acc"):
            out["test/" + key] = value
        else:
            out["train/" + key] = value
    return out


def final_metrics(summary: dict) -> dict[str, float]:
    """``best/pgd_acc``, ``last/aa_acc``, ``diff/clean_acc`` ...: the cell's table row."""
    return {f"{stage}/{k}": v for stage in ("best", "last", "diff")
            for k, v in _numbers({k: (summary.get(stage) or {}).get(k) for k in FINAL_KEYS}).items()}


def _flat(spec: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = json.dumps(value) if isinstance(value, list | type(None)) else str(value)
    return out


def _read_state(cell_dir: Path) -> dict:
    path = cell_dir / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write_state(cell_dir: Path, state: dict) -> None:
    write_json(cell_dir / STATE_FILE, state)


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, cell, cell_dir: Path, state: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(cell_dir / "tensorboard"))
        self.writer.add_text("spec", "```json\n" + cell.model_dump_json(indent=2) + "\n```", 0)

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        for key, value in _epoch_metrics(metrics).items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def finish(self, summary: dict, cell_dir: Path) -> None:
        epoch = (summary.get("last") or {}).get("epoch") or 0
        for key, value in final_metrics(summary).items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    name = "mlflow"

    def __init__(self, cell, cell_dir: Path, state: dict) -> None:
        from mlflow.tracking import MlflowClient

        run_dir = cell_dir.resolve().parent
        settings = cell.track
        self.uri = settings.mlflow_uri or f"sqlite:///{run_dir / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        known = state.get("mlflow") or {}
        if known.get("uri") == self.uri and known.get("run_id"):
            self.run_id = known["run_id"]  # a resumed cell continues its run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = settings.mlflow_experiment or run_dir.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = None if settings.mlflow_uri else (run_dir / "mlartifacts").as_uri()  # not the cwd's ./mlruns
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        run = self.client.create_run(experiment_id, run_name=cell.name, tags={"advssm.cell_dir": str(cell_dir)})
        self.run_id = run.info.run_id
        params = _flat(cell.model_dump())
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # the stores take at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        state["mlflow"] = {"uri": self.uri, "run_id": self.run_id}

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch)
                                                    for k, v in _epoch_metrics(metrics).items()])

    def finish(self, summary: dict, cell_dir: Path) -> None:
        from mlflow.entities import Metric

        now, epoch = int(time.time() * 1000), (summary.get("last") or {}).get("epoch") or 0
        final = final_metrics(summary)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in final.items()])
        for name in ARTIFACTS:
            if (cell_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(cell_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self) -> None:
        pass


class WandbTracker:
    name = "wandb"

    def __init__(self, cell, cell_dir: Path, state: dict) -> None:
        import wandb

        os.environ["WANDB_MODE"] = "offline"  # never the network; `wandb sync` uploads later
        run_dir = cell_dir.resolve().parent
        known = (state.get("wandb") or {}).get("id")
        self.run = wandb.init(mode="offline", dir=str(run_dir), project=cell.track.wandb_project, group=run_dir.name,
                              name=cell.name, config=cell.model_dump(), id=known, resume="allow" if known else None,
                              reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
        state["wandb"] = {"id": self.run.id, "dir": str(Path(self.run.dir).parent)}

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        self.run.log({**_epoch_metrics(metrics), "epoch": epoch}, step=epoch)

    def finish(self, summary: dict, cell_dir: Path) -> None:
        self.run.summary.update(final_metrics(summary))
        for name in ARTIFACTS:
            if (cell_dir / name).is_file():
                self.run.save(str(cell_dir / name), base_path=str(cell_dir), policy="now")

    def close(self) -> None:
        self.run.finish()


KINDS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


class Trackers:
    """The trainer callback that feeds every chosen tracker; a failing one warns once and is dropped."""

    def __init__(self, cell, cell_dir: Path) -> None:
        self.cell_dir = Path(cell_dir)
        self.active = []
        state = _read_state(self.cell_dir)
        for name in cell.track.trackers:
            tracker = self._guard(name, "start", lambda n=name: KINDS[n](cell, self.cell_dir, state))
            if tracker is not None:
                self.active.append(tracker)
        if state:
            self._guard("trackers", "save its run ids", lambda: _write_state(self.cell_dir, state))

    def _guard(self, name: str, what: str, call):
        """``call()``; an exception warns once, naming the tracker and what it was doing, and returns None."""
        try:
            return call()
        except Exception as exc:  # a tracker must never stop the training
            print(f"advssm: warning: tracker {name} failed to {what} ({type(exc).__name__}: {exc}); it is off for "
                  f"the rest of this cell, training continues", file=sys.stderr, flush=True)
            self.active = [t for t in self.active if t.name != name]
            return None

    def _each(self, what: str, method: str, *args) -> None:
        for tracker in list(self.active):
            self._guard(tracker.name, what, lambda t=tracker: getattr(t, method)(*args))

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        self._each(f"log epoch {epoch}", "log_epoch", epoch, metrics)

    def finish(self, summary: dict) -> None:
        """The cell's final numbers and files (after its final evaluation)."""
        self._each("log the final numbers and files", "finish", summary, self.cell_dir)

    def close(self) -> None:
        self._each("close", "close")
        self.active = []


def open_trackers(cell, cell_dir: Path) -> Trackers | None:
    """The trackers ``cell.track`` names for ``cell_dir`` (None when it names none)."""
    if not cell.track.trackers:
        return None
    check_installed(cell.track.trackers)
    return Trackers(cell, cell_dir)


def log_reports(run_dir: Path, cells) -> None:
    """Add the run's report.md / report.html (and the cells' plots) to each cell's MLflow run, once the report
    is written; a failure warns and changes nothing else."""
    run_dir = Path(run_dir)
    for cell in cells:
        if "mlflow" not in cell.track.trackers:
            continue
        known = _read_state(run_dir / cell.name).get("mlflow") or {}
        if not known.get("run_id"):
            continue
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=known["uri"])
            for name in REPORTS:
                if (run_dir / name).is_file():
                    client.log_artifact(known["run_id"], str(run_dir / name), artifact_path="report")
            if (run_dir / cell.name / run_folder.PLOT_FILE).is_file():
                client.log_artifact(known["run_id"], str(run_dir / cell.name / run_folder.PLOT_FILE))
        except Exception as exc:  # the run and its report are complete; only the tracker's copy is missing
            print(f"advssm: warning: tracker mlflow failed to log the report of {cell.name} ({type(exc).__name__}: "
                  f"{exc}); the report is in {run_dir}", file=sys.stderr, flush=True)
