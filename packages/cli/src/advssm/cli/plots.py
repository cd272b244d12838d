"""PNG plots of the per-epoch metrics (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

# metric key -> legend label; a key missing from the metrics is simply not drawn
SERIES = {
    "train_clean_acc": "train clean", "train_adv_acc": "train adversarial",
    "clean_acc": "test clean", "pgd_acc": "test PGD-10", "aa_acc": "test AA",
}


def _series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row.get("epoch", i + 1), row[key]) for i, row in enumerate(metrics) if row.get(key) is not None]
    return [p[0] for p in points], [100 * p[1] for p in points]


def plot_metrics(metrics: list[dict], path: str | Path, title: str = "") -> Path:
    """Train and test clean / robust accuracy per epoch of one cell."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in SERIES.items():
        epochs, values = _series(metrics, key)
        if values:
            ax.plot(epochs, values, marker="o" if key == "aa_acc" else None, label=label)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_comparison(runs: dict[str, list[dict]], path: str | Path) -> Path:
    """Test clean (dashed) and PGD-10 (solid) accuracy per epoch of several cells on one figure."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, metrics) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for key, style in (("clean_acc", "--"), ("pgd_acc", "-")):
            epochs, values = _series(metrics, key)
            if values:
                ax.plot(epochs, values, style, color=color, label=f"{name} {SERIES[key]}")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
