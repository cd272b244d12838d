"""Seeds as a grid axis: a cell named ``<group>-seed<N>`` is seed N of its group, and the report shows each
group's mean and spread over its seeds.

    >>> seed_group("s4d-pgd-at-seed1")
    ('s4d-pgd-at', 1)
    >>> rows = [("s4-pgd-at-seed0", {"best": {"pgd_acc": 0.5}}), ("s4-pgd-at-seed1", {"best": {"pgd_acc": 0.7}})]
    >>> aggregate(rows)[0][1]["best"]["pgd_acc"]["mean"]
    0.6

The spread is the sample standard deviation (ddof 1) over the group's finished seeds; a group of one seed has none.
"""
from __future__ import annotations

import math
import re

# written by spec.axis_label("seed", N) as the last part of a cell name
_SEED_NAME = re.compile(r"^(?:(?P<group>.*)-)?seed(?P<seed>\d+)$")
STAT_KEYS = ("clean_acc", "pgd_acc", "aa_acc")
STAGES = ("best", "last", "diff")


def seed_group(name: str) -> tuple[str, int | None]:
    """``"s4d-pgd-at-seed1"`` -> ``("s4d-pgd-at", 1)``; a name without a seed -> ``(name, None)``; a grid whose only
    axis is the seed -> group ``"cell"`` (the name of a grid without axes)."""
    match = _SEED_NAME.match(name.rpartition("/")[2])
    if not match:
        return name, None
    prefix = name.rpartition("/")[0]
    group = match.group("group") or "cell"
    return (f"{prefix}/{group}" if prefix else group), int(match.group("seed"))


def has_seeds(names) -> bool:
    """Whether any of the cell names is one seed of a group."""
    return any(seed_group(name)[1] is not None for name in names)


def stats(values) -> dict:
    """``{"mean", "std", "n"}`` of the values that are not None (sample std, ddof 1; None for fewer than 2).

    Example:
        >>> s = stats([0.5, 0.7, None])
        >>> round(s["mean"], 6), round(s["std"], 6), s["n"]
        (0.6, 0.141421, 2)
    """
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def aggregate(rows: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The table rows (cell name, summary) grouped by ``seed_group``, in first-seen order: per group its ``seeds``,
    the ``unfinished`` seeds (left out of the statistics: their numbers are the trainer's, without AutoAttack) and
    for each stage (best, last, diff) and accuracy the ``stats`` over the finished seeds."""
    groups: dict[str, list[tuple[int | None, dict]]] = {}
    for name, summary in rows:
        group, seed = seed_group(name)
        groups.setdefault(group, []).append((seed, summary))
    out = []
    for group, members in groups.items():
        done = [s for _, s in members if not s.get("unfinished")]
        entry = {"seeds": [seed for seed, _ in members],
                 "unfinished": [seed for seed, s in members if s.get("unfinished")]}
        for stage in STAGES:
            entry[stage] = {key: stats([(s.get(stage) or {}).get(key) for s in done]) for key in STAT_KEYS}
        out.append((group, entry))
    return out


def _stat_text(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    text = f"{100 * stat['mean']:.2f}"
    return text if stat["std"] is None else f"{text} ± {100 * stat['std']:.2f}"


def group_table(groups: list[tuple[str, dict]], pgd: str = "PGD-10") -> str:
    """The paper's table with one row per group: mean ± std over its finished seeds (%), and n."""
    labels = ("Clean", pgd, "AA")
    head = ["Cell", "n"] + [f"{stage.capitalize()} {label}" for stage in STAGES for label in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, entry in groups:
        n = max((entry["best"][key]["n"] for key in STAT_KEYS), default=0)
        cells = [_stat_text(entry[stage][key]) for stage in STAGES for key in STAT_KEYS]
        name = group + (f" ({len(entry['unfinished'])} unfinished left out)" if entry["unfinished"] else "")
        lines.append("| " + " | ".join([name, str(n), *cells]) + " |")
    return "\n".join(lines)


def mean_metrics(metrics: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per-epoch metrics of each group: every numeric key averaged over the group's seeds at each epoch (the epochs
    all its seeds reached), for the comparison plot."""
    grouped: dict[str, list[list[dict]]] = {}
    for name, rows in metrics.items():
        if rows:
            grouped.setdefault(seed_group(name)[0], []).append(rows)
    out = {}
    for group, runs in grouped.items():
        epochs = min(len(rows) for rows in runs)
        out[group] = [{key: stats([rows[i].get(key) for rows in runs])["mean"] for key in runs[0][i]
                       if all(isinstance(rows[i].get(key), (int, float)) or rows[i].get(key) is None for rows in runs)}
                      for i in range(epochs)]
    return out


def to_json(groups: list[tuple[str, dict]]) -> dict[str, dict]:
    """The groups as one JSON object, group name -> entry."""
    return dict(groups)


def group_table_html(groups: list[tuple[str, dict]], pgd: str = "PGD-10") -> str:
    """``group_table`` as an HTML table (for report.html), the same cells and text."""
    from html import escape

    lines = group_table(groups, pgd).splitlines()
    rows = [[part.strip() for part in line.strip("|").split("|")] for i, line in enumerate(lines) if i != 1]
    head = "".join(f"<th>{escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f'<td{"" if j == 0 else " class=num"}>{escape(v)}</td>' for j, v in enumerate(r))
                   + "</tr>" for r in rows[1:])
    return f"<table class=\"seeds\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
