"""``advssm eval``: attack a checkpoint and report clean and robust accuracy."""
from __future__ import annotations

import click

from .. import interrupts
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


EPS = click.FloatRange(0, 1, min_open=True)  # inputs live in [0, 1]


def _architecture(model, cell) -> str:
    config = model.config
    ads = f", AdS {config.transform_options.get('activation')}" if config.transform == "ads" else ""
    return f"{config.layer} (d_model {config.d_model}, d_state {config.d_state}, {config.n_layers} layers{ads})"


@click.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--attacks", default="pgd,aa", show_default=True,
              help=f"Comma-separated: {', '.join(ATTACK_NAMES)}.")
@click.option("--n", "n", type=click.IntRange(min=1),
              help="Evaluate the first N test examples (default: those of the run's table row; all without a run).")
@click.option("--eps", type=EPS, help="Linf budget in (0, 1] (default: the run's).")
@click.option("--alpha", type=click.FloatRange(0, min_open=True),
              help="PGD step size (default: the run's with the run's eps, else eps/4).")
@click.option("--steps", type=click.IntRange(min=1), help="PGD steps (default: the run's eval_pgd_steps, else 10).")
@click.option("--dataset", help="Data set (default: the run's, recorded in the checkpoint).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--device", help="cpu, cuda or cuda:N (default: the run's device where it exists, else cpu).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeds the attacks, per batch.")
@click.option("--records", "records_path", type=click.Path(dir_okay=False),
              help="Per-example results, JSONL (default: <checkpoint>.eval.jsonl beside it).")
@click.option("--resume", is_flag=True, help="Continue an interrupted evaluation from its last finished batch.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output; also writes <checkpoint>.robustbench.json (RobustBench's model info).")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def eval_command(checkpoint, attacks, n, eps, alpha, steps, dataset, data_dir, batch_size, device, seed,
                 records_path, resume, as_json, progress):
    """Clean and robust accuracy of a checkpoint under the chosen attacks (worst case over them too).

    One rule for every number: an example counts as robust under an attack when it is classified
    correctly both clean and attacked; all attacks run on the same examples. Each example's result
    goes to a records file; --resume continues an interrupted evaluation with the same result.

    \b
    Examples:
      advssm eval runs/X/pgd-at/best.safetensors
      advssm eval model.safetensors --dataset mnist --data-dir data --eps 0.3 --attacks pgd,apgd-ce,square --n 1000
      advssm eval best.safetensors --attacks aa --json
      advssm eval best.safetensors --attacks aa --resume   # after Ctrl-C
    """
    import json
    from pathlib import Path

    from advssm.adv_train.evaluation import evaluate
    from advssm.ssm_layers.checkpoint import atomic_write
    from torch.utils.data import TensorDataset

    run_eps = eps is None
    model, x, y, eps, cell, device = load_for_eval(checkpoint, dataset, data_dir, n, eps, device)
    if cell is not None:  # the run's PGD, so its numbers can be reproduced
        steps = steps or int(cell.train.eval_pgd_steps)
        if alpha is None and run_eps:
            alpha = float(cell.train.alpha)
    steps = steps or 10
    chosen = build_attacks(attacks, model, eps, steps, seed, alpha)
    records = Path(records_path) if records_path else Path(checkpoint).with_suffix(".eval.jsonl")
    if resume and not records.is_file():
        raise ConfigError(f"--resume: no records at {records} to continue; run without --resume")
    if not resume and records.is_file():
        records.unlink()  # a new evaluation: the records of an earlier one would be refused by evaluate
    bar = TqdmProgress("eval", enabled=progress)

    def on_progress(info):
        interrupts.raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt Python swallowed stops here
        bar.on_stage(info["stage"], info["done"], info["total"] or 0)

    try:
        with interrupts.handled():  # Ctrl-C and SIGTERM: KeyboardInterrupt, never lost
            result = evaluate(model, TensorDataset(x, y), chosen, batch_size=batch_size, seed=seed, records=records,
                              resume=resume, progress=on_progress)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"\ninterrupted; continue with: advssm eval {checkpoint} --resume (same options)", err=True)
        raise SystemExit(130) from None
    finally:
        bar.close()
    data = {"checkpoint": str(checkpoint), "eps": eps, "n": len(x), "device": str(device), "records": str(records),
            **result.to_dict()}
    if as_json:
        info = {"architecture": _architecture(model, cell), "dataset": dataset or (cell.data.dataset if cell else None)}
        record = result.to_robustbench(**info)
        path = Path(checkpoint).with_suffix(".robustbench.json")
        atomic_write(path, json.dumps(record, indent=2).encode())
        data["robustbench"], data["robustbench_file"] = record, str(path)
    lines = [f"checkpoint {checkpoint}  eps {eps:g}  n {len(x)}  device {device}",
             f"{'clean':10} {100 * result.clean_acc:6.2f}%"]
    lines += [f"{name:10} {100 * acc:6.2f}%" for name, acc in result.robust_acc.items()]
    if len(result.robust_acc) > 1:
        lines.append(f"{'worst':10} {100 * result.worst_acc:6.2f}%")
    lines += [f"warning: {w}" for w in result.warnings]
    lines.append(f"per-example results: {records}")
    emit(data, as_json, "\n".join(lines))
