"""``advssm eval``: attack a checkpoint and report clean and robust accuracy."""
from __future__ import annotations

import click

from ..checkpoints import load_for_eval
from ..errors import ConfigError
from ..output import emit
from ..progress import TqdmProgress

# pgd (the run's own steps and step size), fgsm, AutoAttack's parts at its budgets, and the whole of it
ATTACK_NAMES = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "aa")


def _build_attack(name: str, model, eps: float, steps: int, alpha: float, seed: int):
    from advssm.adv_train.attacks import FGSM, PGD, AutoAttack, build_attack

    if name == "fgsm":
        return FGSM(model, eps=eps)
    if name == "pgd":
        return PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True, seed=seed)
    if name == "aa":
        return AutoAttack(model, eps=eps, seed=seed)
    return build_attack(name, model, "Linf", eps, seed)


def build_attacks(names: str, model, eps: float, steps: int, seed: int, alpha: float | None = None) -> dict:
    """``"pgd,aa"`` -> {"pgd-10": PGD(...), "aa": AutoAttack(...)}; unknown names are a ConfigError.

    ``alpha`` is the PGD step (default eps / 4)."""
    chosen = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in ATTACK_NAMES]
    if unknown or not chosen:
        raise ConfigError(f"unknown attack {unknown[0] if unknown else names!r}; choose from {', '.join(ATTACK_NAMES)}")
    alpha = eps / 4 if alpha is None else alpha
    return {name if name != "pgd" else f"pgd-{steps}": _build_attack(name, model, eps, steps, alpha, seed)
            for name in chosen}


@click.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--attacks", default="pgd,aa", show_default=True,
              help=f"Comma-separated: {', '.join(ATTACK_NAMES)}.")
@click.option("--n", "n", type=click.IntRange(min=1),
              help="Evaluate the first N test examples (default: those the run evaluated; all without a run).")
@click.option("--eps", type=float, help="Linf budget (default: the run's).")
@click.option("--alpha", type=float, help="PGD step size (default: the run's with the run's eps, else eps/4).")
@click.option("--steps", type=click.IntRange(min=1), help="PGD steps (default: the run's eval_pgd_steps, else 10).")
@click.option("--dataset", help="Data set (default: the run's, from config.toml next to the checkpoint).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--batch-size", default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def eval_command(checkpoint, attacks, n, eps, alpha, steps, dataset, data_dir, batch_size, device, seed, as_json,
                 progress):
    """Clean and robust accuracy of a checkpoint under the chosen attacks (worst case over them too).

    \b
    Examples:
      advssm eval runs/X/pgd-at/best.safetensors
      advssm eval model.safetensors --dataset mnist --data-dir data --eps 0.3 --attacks pgd,apgd-ce,square --n 1000
      advssm eval best.safetensors --attacks aa --json
    """
    import torch
    from advssm.adv_train.evaluation import evaluate
    from torch.utils.data import TensorDataset

    torch.manual_seed(seed)
    run_eps = eps is None
    model, x, y, eps, run = load_for_eval(checkpoint, dataset, data_dir, n, eps, device)
    if run is not None:  # the run's PGD, so its numbers can be reproduced
        steps = steps or int(run.train["eval_pgd_steps"])
        if alpha is None and run_eps:
            alpha = float(run.train["alpha"])
    steps = steps or 10
    chosen = build_attacks(attacks, model, eps, steps, seed, alpha)
    bar = TqdmProgress("eval", enabled=progress)
    try:
        result = evaluate(model, TensorDataset(x, y), chosen, batch_size=batch_size, device=device,
                          progress=lambda info: bar.on_stage(info["stage"], info["done"], info["total"] or 0))
    finally:
        bar.close()
    data = {"checkpoint": str(checkpoint), "eps": eps, "n": len(x), **result.to_dict()}
    lines = [f"checkpoint {checkpoint}  eps {eps:g}  n {len(x)}", f"{'clean':10} {100 * result.clean_acc:6.2f}%"]
    lines += [f"{name:10} {100 * acc:6.2f}%" for name, acc in result.robust_acc.items()]
    if len(result.robust_acc) > 1:
        lines.append(f"{'worst':10} {100 * result.worst_acc:6.2f}%")
    lines += [f"warning: {w}" for w in result.warnings]
    emit(data, as_json, "\n".join(lines))
