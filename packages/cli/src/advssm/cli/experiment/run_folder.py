"""The run folder: its file names (config.toml, spec.json, report.md, report.html, accuracy.png), the specs the
run resolved when it started (``prepare_dir`` writes them; ``read_spec`` and ``read_cells`` are their readers),
the check of an ``--out`` folder, and the listing of a run's finished cells. Each cell's files: ``cell_folder``.

The spec is resolved once, at the run's entry. ``prepare_dir`` writes it three ways: config.toml (for people, and
what ``--resume`` shows), spec.json (the resolved ExperimentSpec and its cells' names in grid order) and every
cell's own cell.json, before any cell trains. Everything after the entry (status, each job's report step, the
reports, the cell of a checkpoint) reads those, and never resolves the TOML again. Folders written before
spec.json existed are read through ``_legacy_spec``, the one place that still resolves a stored config.toml.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from ..errors import ConfigError
from ..files import write_json, write_text
from . import cell_folder
from .cell_folder import is_finished
from .spec import ExperimentSpec, load_toml, resolve_experiment

CONFIG_FILE = "config.toml"
SPEC_FILE = "spec.json"  # the resolved spec: {"spec": ExperimentSpec as JSON, "cells": names in grid order}
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
    """The run's ``ExperimentSpec`` as the run resolved it when it started (spec.json, parsed and type-checked, not
    resolved again). Raises ``ConfigError`` naming the file when it is missing or invalid.

    Example::

        read_spec("runs/2026-12-01-demo").grid.method   # ['standard', 'pgd-at']
    """
    stored = _read_stored(run_dir)
    if stored is None:
        return _legacy_spec(run_dir)
    path = Path(run_dir) / SPEC_FILE
    try:
        return ExperimentSpec.model_validate_json(json.dumps(stored["spec"]))
    except (ValidationError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a resolved spec this advssm can read ({type(exc).__name__}); it was "
                          "damaged or written by another version: rerun the experiment from its config.toml") from None


def cell_names(run_dir: str | Path) -> list[str]:
    """The run's cell names in grid order (from spec.json; an older folder's config.toml)."""
    stored = _read_stored(run_dir)
    if stored is None:
        return [cell.name for cell in _legacy_spec(run_dir).cells()]
    names = stored.get("cells")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{Path(run_dir) / SPEC_FILE} lists no cells; it was damaged: rerun the experiment")
    return names


def read_cells(run_dir: str | Path) -> list:
    """The run's cells, each its own resolved ``CellSpec`` (``<cell>/cell.json``, written before any cell trained),
    in grid order. An older folder holds cell.json only in the cells that started: the others come from its
    config.toml.

    Example::

        [cell.train.method for cell in read_cells("runs/2026-12-01-demo")]   # ['standard', 'pgd-at']
    """
    run_dir = Path(run_dir)
    names = cell_names(run_dir)
    stored = {name: cell_folder.read_cell(run_dir / name) for name in names}
    for name, cell in stored.items():
        if cell is not None and cell.name != name:
            raise ConfigError(f"{run_dir / name / cell_folder.CELL_FILE} is the spec of cell {cell.name!r}, not of "
                              f"{name!r}: it was copied from another cell; put back this cell's own cell.json")
    if all(cell is not None for cell in stored.values()):
        return [stored[name] for name in names]
    legacy = {cell.name: cell for cell in _legacy_spec(run_dir).cells()}
    return [stored[name] or legacy[name] for name in names]


def _read_stored(run_dir: str | Path) -> dict | None:
    """spec.json's content, or None for a folder written before it existed."""
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not JSON; it was damaged: rerun the experiment from its config.toml") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{path} is not a resolved spec; it was damaged: rerun the experiment from its config.toml")
    return stored


def _legacy_spec(run_dir: str | Path):
    """A folder written before spec.json existed: its config.toml resolved (the one re-resolution left, for them)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder ({path} is missing)")
    return resolve_experiment(load_toml(path))


def _grid_order(run_dir: Path) -> list[str]:
    """Cell names in grid order; [] when the run's specs are missing or unreadable."""
    try:
        return cell_names(run_dir)
    except ConfigError:
        return []


def same_experiment(a, b) -> bool:
    """Whether two ExperimentSpecs hold the same settings (``==``, which leaves out the cells a spec caches)."""
    return a == b


def prepare_dir(spec, run_dir: Path, rewrite: bool = False) -> None:
    """Write the resolved specs into a new run folder (config.toml, spec.json and every cell's cell.json), or
    check that an existing one holds the same experiment and add what it lacks (a folder of an earlier version);
    ``rewrite``: a resume with a changed lr / batch size, which the trainer records, replaces them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    if path.is_file() and not rewrite:
        # compare the settings, not the text: a file written by an older version (a key added since) or
        # edited by hand (comments, order) holds the same experiment when it resolves to the same spec
        try:
            same = same_experiment(read_spec(run_dir), spec)
        except ConfigError:
            same = False
        if not same:
            raise ConfigError(f"{run_dir} holds a different experiment ({path} differs); "
                              f"choose another --out, or continue it with --resume {run_dir}")
    else:
        write_text(path, spec.to_toml())  # a full disk names the file and never leaves half a config
    cells = spec.cells()
    if rewrite or not (run_dir / SPEC_FILE).is_file():
        write_json(run_dir / SPEC_FILE, {"spec": spec.model_dump(mode="json"), "cells": [c.name for c in cells]})
    for cell in cells:  # each cell's own spec, before any cell trains; a complete cell keeps the one it trained by
        cell_dir = run_dir / cell.name
        if not (cell_dir / cell_folder.CELL_FILE).is_file() or (rewrite and not cell_folder.is_complete(cell_dir)):
            cell_folder.write_cell(cell_dir, cell)
