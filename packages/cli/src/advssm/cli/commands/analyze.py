"""``advssm analyze``: how a perturbation propagates through a trained model, component by component."""
from __future__ import annotations

from pathlib import Path

import click
import torch
from advssm.ads import propagation_analysis
from advssm.ads.internal_attacks import internal_attack_report
from advssm.adv_train.attacks import PGD

from ..experiment.trained_model import load_for_eval
from ..output import emit


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--n", "n", default=128, show_default=True, type=click.IntRange(min=1), help="Test examples to analyse.")
@click.option("--eps", type=click.FloatRange(0, 1, min_open=True), help="Linf budget in (0, 1] (default: the run's).")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1),
              help="PGD steps of the perturbation.")
@click.option("--dataset", help="Data set (default: the run's).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="PNG of the error per component (default: next to the checkpoint).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--device", help="cpu, cuda or cuda:N (default: the run's device where it exists, else cpu).")
@click.option("--internals/--no-internals", default=True, show_default=True,
              help="Also attack the selective layers' internals (step size Delta, state energy): one PGD of --steps "
                   "per selective block and objective, against random noise of the same eps.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def analyze(checkpoint, n, eps, steps, dataset, data_dir, plot_path, seed, device, internals, as_json):
    """Error propagation under a PGD perturbation: relative error and change rate per component
    (SSM mix, AdS, projection, residual, norm), the output KL divergence and, for LTI layers, the
    bound their parameters imply. For selective layers (S6, Mamba-2) a second table gives how far an
    attack at the same eps moves each layer's step size Delta and state energy, relative to random
    noise (the amplification; n/a for the other layers).

    \b
    Examples:
      advssm analyze runs/X/pgd-at/best.safetensors
      advssm analyze model.safetensors --dataset digits --eps 0.1 --json
      advssm analyze runs/X/s6/best.safetensors --no-internals   # the error propagation only
    """
    run_eps = eps is None
    model, x, y, eps, cell, _ = load_for_eval(checkpoint, dataset, data_dir, n, eps, device)
    # the run's PGD step where its eps is used (as `advssm eval` does), else eps / 4
    alpha = float(cell.train.alpha) if cell is not None and run_eps else eps / 4
    attack = PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True, seed=seed)
    torch.manual_seed(seed)
    report = propagation_analysis(model, x, y=y, attack=attack)
    plot_path = Path(plot_path) if plot_path else Path(checkpoint).with_suffix(".propagation.png")
    report.plot(plot_path)
    text = f"{report.to_markdown().strip()}\n\nplot: {plot_path}"
    data = {**report.to_dict(), "plot": str(plot_path)}
    if internals:
        internal = internal_attack_report(model, x, eps, steps=steps, seed=seed)
        text += f"\n\n{internal.to_markdown().strip()}"
        data["internals"] = internal.to_dict()
    emit(data, as_json, text)
