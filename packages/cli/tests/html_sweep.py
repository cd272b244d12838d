"""A layer x method sweep folder for the HTML report's tests, built from the tiny run's finished cells.

Two cells (s4d-standard, s4d-pgd-at) are complete copies of the tiny run's; s6-standard has trained two
epochs but has no summary yet, s6-pgd-at has not started. Nothing is trained here.
"""
import json
import shutil
import sys

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def partial_sweep(tiny_run, folder):
    """``folder`` as a 2 x 2 sweep (layer s4d, s6 x method standard, pgd-at) that is half done."""
    config = tomllib.loads((tiny_run / "config.toml").read_text())
    config["model"].pop("layer")
    config["grid"] = {"layer": ["s4d", "s6"], "method": ["standard", "pgd-at"]}
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(tomli_w.dumps(config))
    for method in ("standard", "pgd-at"):
        shutil.copytree(tiny_run / method, folder / f"s4d-{method}")
    running = folder / "s6-standard"
    running.mkdir()
    for name in ("metrics.jsonl", "cell.json", "train_eval.jsonl"):
        shutil.copy(tiny_run / "standard" / name, running / name)
    for cell in ("s4d-standard", "s4d-pgd-at", "s6-standard"):  # each cell.json names its own cell, as a run's do
        path = folder / cell / "cell.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "name": cell}))
    return folder
