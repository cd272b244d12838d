"""The final AutoAttack of a cell's best and last checkpoints (the paper's table reports AA for both).

The trainer runs AA only every ``aa_every`` epochs, so the best epoch often has none. This fills
the AA accuracies that are still null in summary.json (and replaces the trainer's where it ran another
protocol than ``[eval]`` asks for), recomputes Diff, and records how the numbers were measured under
``summary["final_eval"]``: a cell is complete once that key is there.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import EvalSettings, RunConfig


def build_autoattack(model, eps: float, settings: EvalSettings, seed: int):
    """AutoAttack as ``settings`` describe: the standard ensemble, or a custom list at a custom budget."""
    from advssm.adv_train.attacks import AutoAttack, build_attack

    if settings.aa_version == "standard":
        return AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed)
    attacks = [build_attack(name, model, "Linf", eps, seed, steps=settings.aa_steps) for name in settings.aa_attacks]
    return AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=attacks, seed=seed)


def protocol(settings: EvalSettings, n: int) -> dict:
    """What the AA column means, stored with the numbers."""
    if not settings.aa:
        return {"aa": None}
    if settings.aa_version == "standard":
        return {"aa": "standard", "n": n}
    return {"aa": "custom", "attacks": list(settings.aa_attacks), "steps": settings.aa_steps, "n": n}


def describe(final_eval: dict) -> str:
    """``protocol`` (plus the PGD settings ``finish_cell`` adds) in words, for report.md."""
    parts = []
    if final_eval.get("pgd_steps") is not None:
        parts.append(f"clean and PGD-{final_eval['pgd_steps']} (eps {final_eval['eps']:.4g}) on the first "
                     f"{final_eval['test_n']} test examples")
    if final_eval.get("aa") == "standard":
        parts.append(f"AA: standard AutoAttack on the first {final_eval['n']}")
    elif final_eval.get("aa") == "custom":
        attacks = ", ".join(a.upper() for a in final_eval["attacks"])
        parts.append(f"AA: a reduced AutoAttack ({attacks}, {final_eval['steps']} steps) on the first "
                     f"{final_eval['n']}")
    elif final_eval.get("aa") == "trainer":
        parts.append(f"AA: the trainer's AutoAttack ({final_eval['version']}) every train.aa_every epochs, on the "
                     f"first {final_eval['n']}")
    else:
        parts.append("AA: not run")
    return "; ".join(parts)


def _write_json(path: Path, data: dict) -> None:
    from advssm.ssm_layers.checkpoint import atomic_write

    atomic_write(path, json.dumps(data, indent=2).encode())  # an interrupt leaves the old or the new summary


def finish_cell(config: RunConfig, cell_dir: Path, test_set, progress=None) -> dict:
    """Run the final AA where the summary lacks it (or holds the trainer's under another protocol) and mark the
    cell complete; returns the summary."""
    from advssm.adv_train.evaluation import evaluate
    from advssm.ssm_layers import load_checkpoint

    path = cell_dir / "summary.json"
    summary = json.loads(path.read_text())
    settings, train = config.eval, config.train_config()
    n = min(settings.aa_n, len(test_set))
    # the trainer's periodic AA (every train.aa_every epochs) may already have measured a checkpoint; its number
    # stands only where it followed the protocol the table reports, else the final AA measures it again
    same_protocol = settings.aa_version == train.aa_version == "standard" and min(train.aa_n, len(test_set)) == n
    trainer_aa = any(summary[stage].get("aa_acc") is not None for stage in ("best", "last"))
    if settings.aa:
        for stage in ("best", "last"):
            if summary[stage].get("aa_acc") is not None and same_protocol:
                continue
            model, _ = load_checkpoint(cell_dir / f"{stage}.safetensors")
            attack = build_autoattack(model, train.eps, settings, train.seed)
            hook = (lambda info, s=stage: progress(s, info)) if progress else None
            result = evaluate(model, test_set, {"aa": attack}, n_examples=n, batch_size=train.batch_size,
                              progress=hook, check_masking=False)
            summary[stage]["aa_acc"] = result.robust_acc["aa"]
        best, last = summary["best"], summary["last"]
        summary["diff"] = {k: (None if best.get(k) is None or last.get(k) is None else best[k] - last[k])
                           for k in ("clean_acc", "pgd_acc", "aa_acc")}
    test_n = len(test_set) if train.eval_n is None else min(train.eval_n, len(test_set))
    measured = protocol(settings, n)
    if not settings.aa and trainer_aa:  # the AA numbers are the trainer's: say so instead of "not run"
        measured = {"aa": "trainer", "version": train.aa_version, "n": min(train.aa_n, len(test_set))}
    summary["final_eval"] = {**measured, "eps": train.eps, "pgd_steps": train.eval_pgd_steps, "test_n": test_n}
    _write_json(path, summary)
    return summary
