"""PNG plots of the per-epoch metrics (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import io

import matplotlib.pyplot as plt  # noqa: E402

from ..files import write_bytes

# (metrics key, legend label, line style): colour = train / test, dashed = clean, solid = robust;
# a key missing from the metrics is simply not drawn
TRAIN_SET = (("clean_acc", "train clean", "C0--"), ("pgd_acc", "train PGD", "C0-"))
DURING_TRAINING = (("train_clean_acc", "train clean (while training)", "C0:"),
                   ("train_adv_acc", "train adversarial (while training)", "C2:"))
TEST = (("clean_acc", "test clean", "C1--"), ("pgd_acc", "test PGD", "C1-"), ("aa_acc", "test AA", "C3o"))


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes at 100 dpi, the figure closed: how every pyplot figure of the CLI ends.

        fig, ax = plt.subplots(); ax.plot([0, 1]); data = png_bytes(fig)   # data[:4] == b"\\x89PNG"
    """
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _save(fig, path) -> None:
    """The figure as a PNG at ``path``, written atomically: a full disk names the file (matplotlib's own write
    said only "[Errno 28] No space left on device") and never leaves half a PNG."""
    write_bytes(path, png_bytes(fig))


def _series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row.get("epoch", i + 1), row[key]) for i, row in enumerate(metrics) if row.get(key) is not None]
    return [p[0] for p in points], [100 * p[1] for p in points]


def _draw(ax, rows: list[dict], series) -> None:
    for key, label, style in series:
        epochs, values = _series(rows, key)
        if values:
            ax.plot(epochs, values, style, label=label)


def plot_metrics(metrics: list[dict], path: str | Path, title: str = "", train_set: list[dict] | None = None,
                 summary: dict | None = None) -> Path:
    """Train and test, clean and robust accuracy per epoch of one cell.

    ``train_set`` holds the ``train_eval.jsonl`` rows (train-set accuracy measured after each epoch as the test set
    is); the accuracies the trainer saw while training are drawn dotted, for reference. ``summary`` adds the final
    AutoAttack accuracy of the best and last checkpoints as two points.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train_set:
        _draw(ax, train_set, TRAIN_SET)
    _draw(ax, metrics, DURING_TRAINING)
    _draw(ax, metrics, TEST)
    final = [(summary[stage]["epoch"], 100 * summary[stage]["aa_acc"]) for stage in ("best", "last")
             if summary and (summary.get(stage) or {}).get("aa_acc") is not None]
    if final:
        ax.plot(*zip(*final), "C3D", label="test AA (best, last checkpoint)")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    return Path(path)


def plot_comparison(runs: dict[str, list[dict]], path: str | Path) -> Path:
    """Test clean (dashed) and PGD (solid) accuracy per epoch of several cells on one figure."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, metrics) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for key, style in (("clean_acc", "--"), ("pgd_acc", "-")):
            epochs, values = _series(metrics, key)
            if values:
                ax.plot(epochs, values, style, color=color, label=f"{name} {'clean' if key == 'clean_acc' else 'PGD'}")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    return Path(path)
