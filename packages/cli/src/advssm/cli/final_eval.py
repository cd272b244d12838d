"""The final AutoAttack of a cell's best and last checkpoints (the paper's table reports AA for both).

The trainer runs AA only every ``aa_every`` epochs, so the best epoch often has none. This fills
the AA accuracies that are still null in summary.json, recomputes Diff, and records the protocol
under ``summary["final_eval"]``: a cell is complete once that key is there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .config import EvalSettings, RunConfig


def build_autoattack(model, eps: float, settings: EvalSettings, seed: int):
    """AutoAttack as ``settings`` describe: the standard ensemble, or a custom list at a custom budget."""
    from advssm.adv_train.attacks import APGD, APGDT, FAB, AutoAttack, Square

    if settings.aa_version == "standard":
        return AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed)
    steps = settings.aa_steps
    makers = {
        "apgd-ce": lambda: APGD(model, eps=eps, steps=steps, loss="ce", seed=seed),
        "apgd-dlr": lambda: APGD(model, eps=eps, steps=steps, loss="dlr", seed=seed),
        "apgd-t": lambda: APGDT(model, eps=eps, steps=steps, seed=seed),
        "fab-t": lambda: FAB(model, eps=eps, steps=steps, targeted=True, seed=seed),
        "square": lambda: Square(model, eps=eps, n_queries=50 * steps, seed=seed),
    }
    return AutoAttack(model, norm="Linf", eps=eps, version="custom",
                      attacks=[makers[name]() for name in settings.aa_attacks], seed=seed)


def protocol(settings: EvalSettings, n: int) -> dict:
    """What the AA column means, stored with the numbers."""
    if settings.aa_version == "standard":
        return {"aa": "standard", "n": n}
    return {"aa": "custom", "attacks": list(settings.aa_attacks), "steps": settings.aa_steps, "n": n}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # atomic: an interrupt leaves the old or the new summary, never half of one


def finish_cell(config: RunConfig, cell_dir: Path, test_set, progress=None) -> dict:
    """Run the final AA where the summary lacks it and mark the cell complete; returns the summary."""
    from advssm.adv_train.evaluation import evaluate
    from advssm.ssm_layers import load_checkpoint

    path = cell_dir / "summary.json"
    summary = json.loads(path.read_text())
    settings, train = config.eval, config.train_config()
    n = min(settings.aa_n, len(test_set))
    if settings.aa:
        for stage in ("best", "last"):
            if summary[stage].get("aa_acc") is not None:
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
    summary["final_eval"] = protocol(settings, n) if settings.aa else {"aa": None}
    _write_json(path, summary)
    return summary
