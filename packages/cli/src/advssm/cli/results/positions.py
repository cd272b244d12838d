"""Robustness against position: accuracy under attack as a function of where a window of fixed length sits.

``advssm eval CKPT --position-sweep LEN[:STRIDE]`` attacks only the positions ``start .. start + LEN - 1``
(tokens: a sequence's steps, an image's pixels in raster order; see ``advssm.adv_train.threat_models``) for
starts 0, STRIDE, 2 STRIDE, ... (the last window ends at the last position), every window in one
``evaluate()`` call (one clean pass, the same examples; the attacks are named ``name@start=S`` in the
records, so ``--resume`` continues a sweep). The study goes beside the checkpoint as
``<checkpoint>.positions.json`` / ``.md`` (table) / ``.png`` (plot), each written atomically::

    {"checkpoint": "...", "n": 200, "norm": "Linf", "eps": 0.1, "length": 64, "stride": 64,
     "clean_acc": 0.9, "attacks": ["pgd-10"],
     "points": [{"start": 0, "threat_model": "window(start=0,length=64)", "robust_acc": {"pgd-10": 0.4},
                 "worst_acc": 0.4}, ...], "warnings": [...], "records": "..."}

Example:
    >>> s = {"clean_acc": 0.9, "attacks": ["pgd-10"], "length": 4, "points": [
    ...      {"start": 0, "robust_acc": {"pgd-10": 0.5}, "worst_acc": 0.5}]}
    >>> print(sweep_table(s).splitlines()[2])
    | 0..3 | 90.00 | 50.00 |
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..files import write_bytes, write_json, write_text

SUFFIX = ".positions"  # best.safetensors -> best.positions.json / .md / .png beside it


def parse_sweep(text: str) -> tuple[int, int | None]:
    """``"64"`` -> (64, None) (stride = length), ``"64:16"`` -> (64, 16); anything else is a ConfigError."""
    parts = str(text).split(":")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--position-sweep {text!r}: write LEN or LEN:STRIDE with positive integers "
                          "(e.g. 64 or 64:16)")
    return int(parts[0]), int(parts[1]) if len(parts) == 2 else None


def attack_at(name: str, start: int) -> str:
    """The evaluation's name of ``name`` attacking the window at ``start`` (``pgd-10@start=64``)."""
    return f"{name}@start={start}"


def study_of(checkpoint: str, result, windows: list, attacks: list[str], records: Path, *, norm: str, eps: float,
             length: int, stride: int) -> dict:
    """The study from the ``EvalResult`` of the attacks named ``attack_at(attack, start)``; the per-window worst
    case (correct clean and under every attack at that window) read from the per-example records."""
    rows = [json.loads(line) for line in Path(records).read_text().splitlines() if line.strip()]
    points = []
    for window in windows:
        start = dict(window.params)["start"]
        names = [attack_at(a, start) for a in attacks]
        worst = sum(r["clean_correct"] and all(r["robust"][k] for k in names) for r in rows) / max(len(rows), 1)
        points.append({"start": start, "threat_model": window.name,
                       "robust_acc": {a: result.robust_acc[attack_at(a, start)] for a in attacks},
                       "worst_acc": worst})
    return {"checkpoint": str(checkpoint), "n": result.n, "norm": norm, "eps": eps, "length": length,
            "stride": stride, "clean_acc": result.clean_acc, "attacks": list(attacks), "points": points,
            "warnings": list(result.warnings), "records": str(records)}


def _columns(study: dict) -> list[str]:
    return [*study["attacks"], *(["worst"] if len(study["attacks"]) > 1 else [])]


def sweep_table(study: dict) -> str:
    """Accuracy (%) per window position: one row per window (its positions), clean then each attack (and the
    worst case over them)."""
    columns = _columns(study)
    lines = ["| positions | clean | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for p in study["points"]:
        values = [p["worst_acc"] if c == "worst" else p["robust_acc"][c] for c in columns]
        lines.append(f"| {p['start']}..{p['start'] + study['length'] - 1} | {100 * study['clean_acc']:.2f} | "
                     + " | ".join(f"{100 * v:.2f}" for v in values) + " |")
    return "\n".join(lines)


def plot_sweep(study: dict) -> bytes:
    """PNG bytes: accuracy (%) against the window's first position, one line per attack, the clean accuracy
    dashed."""
    from .plots import plt, png_bytes  # matplotlib: loaded when a plot is drawn

    starts = [p["start"] for p in study["points"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(100 * study["clean_acc"], color="grey", linestyle="--", label="clean")
    for i, column in enumerate(_columns(study)):
        acc = [p["worst_acc"] if column == "worst" else p["robust_acc"][column] for p in study["points"]]
        ax.plot(starts, [100 * a for a in acc], marker="o", color=f"C{i % 10}", label=column)
    ax.set(xlabel=f"first position of the attacked window ({study['length']} positions)", ylabel="accuracy (%)",
           title=f"robust accuracy against position ({study['norm']}, eps {study['eps']:g})", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return png_bytes(fig)


def write_sweep(study: dict, checkpoint: str | Path) -> dict[str, str]:
    """``<checkpoint>.positions.json`` / ``.md`` / ``.png`` beside the checkpoint, each written atomically;
    returns their paths by kind."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.with_name(checkpoint.stem + SUFFIX)
    paths = {kind: stem.with_name(stem.name + "." + kind) for kind in ("json", "md", "png")}
    write_json(paths["json"], study)
    write_text(paths["md"], sweep_table(study) + "\n")
    write_bytes(paths["png"], plot_sweep(study))
    return {kind: str(path) for kind, path in paths.items()}
