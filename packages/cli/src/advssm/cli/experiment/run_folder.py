"""The run folder: its file names (config.toml, report.md, report.html, accuracy.png), the
config.toml the run resolved and wrote when it started (``prepare_dir`` writes it,
``read_spec`` is its one reader), the check of an ``--out`` folder, and the listing of a run's
finished cells. Each cell's files: ``cell_folder``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError
from ..files import write_text

# the cell folder's names and readers, re-exported for the commands that list a run's cells
from .cell_folder import is_finished
from .spec import load_toml, resolve_experiment

CONFIG_FILE = "config.toml"


REPORT_FILE = "report.md"
REPORT_HTML = "report.html"


PLOT_FILE = "accuracy.png"  # the run's curves beside report.md, and each cell's in its folder


def check_out_folder(path: str | Path) -> None:
    """Refuse an ``--out`` folder that exists and holds files but is not an advssm run folder (no config.toml):
    a run writes report.md, accuracy.png and cell folders there, over whatever the user keeps in it. An empty
    folder, or one holding only a run's lock files (a run killed before it wrote config.toml), is fine."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder; choose a new folder for the run")
    if (path / CONFIG_FILE).is_file():
        return
    foreign = sorted(p.name for p in path.iterdir() if not (p.name.startswith(".") and p.name.endswith(".lock")))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigError(f"--out {path} is an existing folder that is not an advssm run folder (no {CONFIG_FILE}; it "
                          f"holds {shown}); a run would write over its files: choose a new or empty folder")


def check_report_folder(path: str | Path) -> None:
    """Refuse to write a report into a folder whose report.md (or accuracy.png, without a report.md) advssm did
    not write: a report title always starts with "# advssm"."""
    path = Path(path)
    report = path / REPORT_FILE
    ours = report.is_file() and report.read_bytes()[:8] == b"# advssm"
    theirs = [name for name in (REPORT_FILE, PLOT_FILE) if (path / name).exists()]
    if theirs and not ours:
        raise ConfigError(f"--out {path} holds {' and '.join(theirs)} that advssm did not write; the report would "
                          "write over them: choose a new or empty folder")


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh folder ``root/<UTC timestamp>-<name>`` (a numeric suffix if that exists already)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{name}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def find_cells(run_dir: str | Path) -> list[Path]:
    """The finished cells of a run: the folder itself if it is a cell, else its sub-folders with a summary,
    in the order of the run's grid (as its own report.md lists them), else by name."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return [run_dir]
    found = sorted(p for p in run_dir.iterdir() if p.is_dir() and is_finished(p))
    order = {name: i for i, name in enumerate(_grid_order(run_dir))}
    return sorted(found, key=lambda p: (order.get(p.name, len(order)), p.name))


def read_spec(run_dir: str | Path):
    """The run's ``ExperimentSpec``: its config.toml, the spec the run resolved and wrote when it started
    (``experiment.prepare_dir``). Everything after the run's entry (status, the jobs' reports, a checkpoint's cell)
    reads the run's settings through here. Raises ``ConfigError`` naming the file when it is missing or invalid.

    Example::

        [cell.name for cell in read_spec("runs/2026-12-01-demo").cells()]   # ['standard', 'pgd-at']
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder ({path} is missing)")
    return resolve_experiment(load_toml(path))


def _grid_order(run_dir: Path) -> list[str]:
    """Cell names in grid order from the run's config.toml; [] when it is missing or unreadable."""
    try:
        return [cell.name for cell in read_spec(run_dir).cells()]
    except ConfigError:
        return []


def prepare_dir(spec, run_dir: Path, rewrite: bool = False) -> None:
    """Write config.toml into a new run folder, or check that an existing one holds the same experiment
    (``rewrite``: a resume with a changed lr / batch size, which the trainer records, replaces it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    if path.is_file() and not rewrite:
        # compare the settings, not the text: a file written by an older version (a key added since) or
        # edited by hand (comments, order) holds the same experiment when it resolves to the same spec
        try:
            same = read_spec(run_dir) == spec
        except ConfigError:
            same = False
        if not same:
            raise ConfigError(f"{run_dir} holds a different experiment ({path} differs); "
                              f"choose another --out, or continue it with --resume {run_dir}")
        return

    write_text(path, spec.to_toml())  # a full disk names the file and never leaves half a config
