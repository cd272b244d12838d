"""Robustness curves: accuracy against eps of one or several checkpoints, as JSON, a Markdown table and a plot.

``advssm eval A B --eps 0.01,0.02,0.05`` evaluates every eps of each checkpoint in one ``evaluate()`` call
(one clean pass; every attack at every eps on the same examples) and hands the results here. One curve is
a dict (``curve_of`` builds it)::

    {"label": "pgd-at/best", "checkpoint": "...", "n": 200, "clean_acc": 0.9,
     "attacks": ["pgd-10", "aa"],
     "points": [{"eps": 0.01, "robust_acc": {"pgd-10": 0.8, "aa": 0.78}, "worst_acc": 0.77}, ...],
     "warnings": [...], "records": "..."}

The clean accuracy is the curve's point at eps 0 (drawn so, and listed so in the table).

Example:
    >>> c = {"label": "a", "clean_acc": 0.9, "attacks": ["pgd-10"], "points": [
    ...      {"eps": 0.1, "robust_acc": {"pgd-10": 0.5}, "worst_acc": 0.5}]}
    >>> print(curve_table([c]).splitlines()[2])
    | 0 | 90.00 | 90.00 |
"""
from __future__ import annotations

import json
from pathlib import Path

from ..files import write_bytes, write_json, write_text

CURVE_SUFFIX = ".curve"  # best.safetensors -> best.curve.json / .md / .png beside it
COMPARISON_STEM = "curves"  # several checkpoints: curves.json / .md / .png in --curves-out


def attack_at(name: str, eps: float) -> str:
    """The evaluation's name of ``name`` at ``eps`` when several eps run together (``pgd-10@0.05``)."""
    return f"{name}@{eps:g}"


def worst_by_eps(records: Path, groups: dict[float, list[str]]) -> dict[float, float]:
    """Per eps, the fraction of examples correct clean and under every attack of that eps (the worst case),
    read from the evaluation's per-example records."""
    rows = [json.loads(line) for line in Path(records).read_text().splitlines() if line.strip()]
    return {eps: sum(r["clean_correct"] and all(r["robust"][name] for name in names) for r in rows) / len(rows)
            for eps, names in groups.items()}


def curve_of(label: str, checkpoint: str, result, eps_values: list[float], attacks: list[str],
             records: Path) -> dict:
    """One checkpoint's curve from the ``EvalResult`` of its attacks named ``attack_at(attack, eps)``."""
    groups = {eps: [attack_at(a, eps) for a in attacks] for eps in eps_values}
    worst = worst_by_eps(records, groups)
    points = [{"eps": eps, "robust_acc": {a: result.robust_acc[attack_at(a, eps)] for a in attacks},
               "worst_acc": worst[eps]} for eps in eps_values]
    return {"label": label, "checkpoint": str(checkpoint), "n": result.n, "clean_acc": result.clean_acc,
            "attacks": list(attacks), "points": points, "warnings": list(result.warnings), "records": str(records)}


def labels(checkpoints: list[str]) -> list[str]:
    """Short distinct names: the file's stem, with as many parent folders as it takes to tell them apart."""
    paths = [Path(c).resolve() for c in checkpoints]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join([*p.parent.parts[len(p.parent.parts) - depth + 1:], p.stem]) if depth > 1 else p.stem
                 for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _columns(curves: list[dict]) -> list[tuple[dict, str]]:
    """(curve, attack or "worst") per table column; "worst" only where a curve has several attacks."""
    return [(curve, name) for curve in curves
            for name in [*curve["attacks"], *(["worst"] if len(curve["attacks"]) > 1 else [])]]


def curve_table(curves: list[dict]) -> str:
    """Accuracy (%) against eps: one row per eps (eps 0 = clean), one column per checkpoint and attack."""
    columns = _columns(curves)
    many = len(curves) > 1
    head = ["eps"] + [f"{c['label']} {name}" if many else name for c, name in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| " + " | ".join(["0"] + [f"{100 * c['clean_acc']:.2f}" for c, _ in columns]) + " |")
    for eps in sorted({p["eps"] for c in curves for p in c["points"]}):
        row = [f"{eps:g}"]
        for curve, name in columns:
            point = next((p for p in curve["points"] if p["eps"] == eps), None)
            value = None if point is None else (point["worst_acc"] if name == "worst" else point["robust_acc"][name])
            row.append("-" if value is None else f"{100 * value:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_curves(curves: list[dict], title: str = "robust accuracy against eps") -> bytes:
    """PNG bytes: accuracy (%) against eps, one colour per checkpoint, one line style per attack, the clean
    accuracy at eps 0."""
    from .plots import plt, png_bytes  # matplotlib: loaded when a plot is drawn

    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, curve in enumerate(curves):
        names = list(curve["attacks"]) + (["worst"] if len(curve["attacks"]) > 1 else [])
        for j, name in enumerate(names):
            eps = [0.0] + [p["eps"] for p in curve["points"]]
            acc = [curve["clean_acc"]] + [p["worst_acc"] if name == "worst" else p["robust_acc"][name]
                                          for p in curve["points"]]
            label = f"{curve['label']} {name}" if len(curves) > 1 else name
            ax.plot(eps, [100 * a for a in acc], styles[j % len(styles)], marker="o", color=f"C{i % 10}",
                    label=label)
    ax.set(xlabel="eps", ylabel="accuracy (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return png_bytes(fig)


def write_curves(curves: list[dict], stem: Path) -> dict[str, str]:
    """``stem``.json (``{"curves": [...]}``), .md (the table) and .png (the plot), each written atomically;
    returns their paths by kind."""
    stem = Path(stem)
    paths = {kind: stem.with_name(stem.name + "." + kind) for kind in ("json", "md", "png")}
    write_json(paths["json"], {"curves": curves})
    write_text(paths["md"], curve_table(curves) + "\n")
    write_bytes(paths["png"], plot_curves(curves))
    return {kind: str(path) for kind, path in paths.items()}


def curve_stem(checkpoint: str | Path) -> Path:
    """``runs/x/best.safetensors`` -> ``runs/x/best.curve`` (its curve files are that + .json/.md/.png)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + CURVE_SUFFIX)


def read_curves(folder: str | Path) -> tuple[list[dict], list[str]]:
    """(curves, problems): the curves stored in ``folder``'s ``*.curve.json`` and ``curves.json`` files (for the
    HTML report), and one sentence per file that could not be read."""
    found, problems = [], []
    folder = Path(folder)
    for path in sorted([*folder.glob(f"*{CURVE_SUFFIX}.json"), *folder.glob(f"{COMPARISON_STEM}.json")]):
        try:
            found += json.loads(path.read_text())["curves"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path.name} is not a curve file of advssm eval ({type(exc).__name__}: {exc})")
    return found, problems
