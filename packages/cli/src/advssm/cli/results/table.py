"""The Best / Last / Diff table of Clean, PGD and AutoAttack accuracy, as Markdown, and the notes under it that
say what its numbers are (on which examples, which attacks, every warning). The terminal, report.md and report.html
print it the same way.
"""
from __future__ import annotations

import math

from ..experiment.final_eval import describe

STAGES = ("best", "last", "diff")


COLUMNS = (("clean_acc", "Clean"), ("pgd_acc", "PGD-10"), ("aa_acc", "AA"))


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}"


def pgd_label(summaries) -> str:
    """``PGD-10`` when every summary used 10 PGD steps (the paper's column), else ``PGD``."""
    steps = {(s.get("final_eval") or {}).get("pgd_steps") for s in summaries}
    return f"PGD-{steps.pop()}" if len(steps) == 1 and None not in steps else "PGD"


def summary_table(rows: list[tuple[str, dict]]) -> str:
    """The paper's table: clean / PGD-10 / AA accuracy (%) of the best and last checkpoints and Diff = Best - Last."""
    pgd = pgd_label(summary for _, summary in rows)
    labels = [label if key != "pgd_acc" else pgd for key, label in COLUMNS]
    head = ["Cell"] + [f"{stage.capitalize()} {label}" for stage in STAGES for label in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, summary in rows:
        best, last = summary.get("best") or {}, summary.get("last") or {}
        diff = summary.get("diff") or {}
        cells = [_pct(part.get(key)) for part in (best, last, diff) for key, _ in COLUMNS]
        name = f"{name} (unfinished)" if summary.get("unfinished") else name  # no final evaluation: not comparable
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def selection_text(summary: dict) -> str | None:
    """``the epoch with the highest PGD-10 accuracy on the test set`` (None for a folder without the record)."""
    selection = summary.get("selection")
    if not selection:
        return None
    what = {"pgd": pgd_label([summary]) if summary.get("final_eval") else "PGD", "clean": "clean"}[selection["by"]]
    where = {"test": "the test set (the paper's choice; it flatters Best)",
             "val": "a validation slice held out from the training set"}[selection["on"]]
    return f"the epoch with the highest {what} accuracy on {where}"


def _grouped(label: str, texts: list, names: list[str]) -> list[str]:
    """One line per distinct text, naming the cells it applies to when they differ."""
    groups: dict[str, list[str]] = {}
    for text, name in zip(texts, names):
        if text:
            groups.setdefault(text, []).append(name)
    every = len(groups) == 1 and len(next(iter(groups.values()))) == len(names)
    return [f"{label}{'' if every else ' (' + ', '.join(cells) + ')'}: {text}." for text, cells in groups.items()]


def table_notes(rows: list[tuple[str, dict]]) -> list[str]:
    """The lines under a printed table: on which examples its numbers are (the final evaluation's protocol, which
    the per-epoch lines do not share), which rows are unfinished, and every warning (Square's gradient-masking
    check among them), so the terminal says what report.md says."""

    names = [name for name, _ in rows]
    lines = _grouped("Numbers", [describe(s["final_eval"]) if s.get("final_eval") else
                                 "the trainer's per-epoch numbers (no final evaluation)" for _, s in rows], names)
    lines += [f"{name}: unfinished: {s['unfinished']}" for name, s in rows if s.get("unfinished")]
    lines += [f"warning ({name}): {w}" for name, s in rows for w in s.get("warnings", [])]
    return lines
