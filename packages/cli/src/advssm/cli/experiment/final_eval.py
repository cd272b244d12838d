"""The final evaluation of a cell's best and last checkpoints: the numbers of its table row.

For each checkpoint, clean, PGD (the run's eval attack) and AutoAttack run together through
``evaluate()`` on the same first ``eval.aa_n`` test examples, with the gradient-masking checks on and
the attacks seeded from ``eval_seed(run seed, epoch)``, on the device the cell trained on. The result goes
to ``final_eval.json`` beside the trainer's files (never into them), the per-example records to
``final_eval_<stage>.jsonl``; an interrupted evaluation continues from its last finished batch.
"""
from __future__ import annotations

from pathlib import Path

import torch
from advssm.adv_train.attacks import AutoAttack, build
from advssm.adv_train.attacks.autoattack import FIXED_VERSIONS
from advssm.adv_train.config import AA_VERSIONS
from advssm.adv_train.evaluation import evaluate
from advssm.adv_train.precision import autocast_forward
from advssm.adv_train.trainer import eval_seed
from advssm.ssm_layers import load_checkpoint

from ..files import write_bytes
from . import cell_folder

_BUDGET_KEYS = ("steps", "queries", "restarts", "n_restarts")


def components(attack, names=None) -> list[dict]:
    """Each AutoAttack component's name (``names``: as the config lists them) and budget (steps or queries, and
    ``eot_iter``, the samples averaged per step, where it is more than one), for the label beside the number."""
    described = attack.describe().get("components", [])
    names = list(names) if names is not None else [c["name"] for c in described]
    return [{"name": name, **{k: c[k] for k in _BUDGET_KEYS if c.get(k) is not None},
             **({"eot_iter": c["eot_iter"]} if c.get("eot_iter", 1) > 1 else {})}
            for name, c in zip(names, described)]


def trainer_components(train) -> list[dict] | None:
    """The components of the trainer's AutoAttack where its version fixes them ("rand"; "standard" and "custom" are
    named by their version alone, as before), built as the trainer builds it but on no model."""
    if train.aa_version != "rand":
        return None

    return components(AutoAttack(torch.nn.Identity(), norm="Linf", eps=train.eps, version="rand"))


def protocol(cell, n: int, test_n: int, parts: list[dict] | None) -> dict:
    """What the row's numbers are: the attacks and budgets, the examples, eps and PGD steps."""
    settings, train = cell.eval, cell.train
    common = {"eps": train.eps, "pgd_steps": train.eval_pgd_steps, "test_n": test_n}
    if not settings.aa:
        if train.aa_every > 0:  # the AA numbers are the trainer's: say so instead of "not run"
            fixed = trainer_components(train)
            return {"aa": "trainer", "version": train.aa_version, "n": min(train.aa_n, test_n),
                    **({"components": fixed} if fixed else {}), **common}
        return {"aa": None, **common}
    if settings.aa_version in FIXED_VERSIONS:
        return {"aa": settings.aa_version, "n": n, "components": parts, **common}
    return {"aa": "custom", "attacks": list(settings.aa_attacks), "steps": settings.aa_steps, "n": n,
            "components": parts, **common}


def _budget(part: dict) -> str:
    if "queries" in part:
        return f"{part['queries']} queries"
    if "steps" not in part:
        return "default budget"
    eot = f" x {part['eot_iter']} EOT samples" if part.get("eot_iter", 1) > 1 else ""
    return f"{part['steps']} steps{eot}"


def _listed(parts) -> str:
    return ", ".join(f"{c['name'].upper()} {_budget(c)}" for c in parts or [])


def describe(final_eval: dict) -> str:
    """``protocol`` in words, for report.md."""
    parts = []
    same = final_eval.get("aa") in AA_VERSIONS
    n = final_eval.get("n") if same else final_eval.get("test_n")
    if final_eval.get("pgd_steps") is not None:
        where = "the same first" if same else "the first"
        parts.append(f"clean and PGD-{final_eval['pgd_steps']} (eps {final_eval['eps']:.4g})"
                     + (", and AA, " if same else " ") + f"on {where} {n} test examples")
    if same:
        listed = _listed(final_eval.get("components"))
        if final_eval["aa"] == "standard":
            parts.append(f"AA: standard AutoAttack ({listed})" if listed else "AA: standard AutoAttack")
        elif final_eval["aa"] == "rand":
            # EOT samples: forward-backward passes averaged per step, for a model that is random at evaluation
            parts.append(f"AA: AutoAttack rand ({listed})" if listed else "AA: AutoAttack rand")
        else:
            listed = listed or ", ".join(a.upper() for a in final_eval["attacks"]) + f", {final_eval['steps']} steps"
            parts.append(f"AA: a reduced AutoAttack ({listed})")
    elif final_eval.get("aa") == "trainer":
        version = final_eval["version"]
        if final_eval.get("components"):
            version += ": " + _listed(final_eval["components"])
        parts.append(f"AA: the trainer's AutoAttack ({version}) every train.aa_every epochs, on the "
                     f"first {final_eval['n']}")
    else:
        parts.append("AA: not run")
    return "; ".join(parts)


def finish_cell(cell, cell_dir: Path, test_set, device, summary: dict, progress=None, is_main: bool = True) -> dict:
    """Run the final evaluation of ``cell_dir``'s checkpoints (continuing a cut one) and write final_eval.json.

    ``summary`` is the trainer's (it names the best and last epochs). Under torchrun every rank calls this
    (the evaluation is collective) and rank 0 alone writes. Returns the cell's table row."""
    train, settings = cell.train, cell.eval
    test_n = len(test_set) if train.eval_n is None else min(train.eval_n, len(test_set))
    n = min(settings.aa_n, test_n)
    stages, parts = {}, None
    if settings.aa:
        for stage in cell_folder.CHECKPOINTS:
            if stage == "last" and summary["last"]["epoch"] == summary["best"]["epoch"]:
                # the same weights (Best is the last epoch): the same evaluation, not run twice
                records = cell_folder.records_file(cell_dir, stage)
                if is_main:
                    write_bytes(records, cell_folder.records_file(cell_dir, "best").read_bytes())
                stages[stage] = {**stages["best"], "records": records.name}
                continue
            model, _ = load_checkpoint(cell_folder.checkpoint(cell_dir, stage), map_location=torch.device(device))
            seed = eval_seed(train.seed, summary[stage]["epoch"])
            pgd = build("pgd", model, eps=train.eps, alpha=train.alpha, steps=train.eval_pgd_steps, seed=seed)
            # AutoAttack as [eval] sets it: standard or rand at their budgets, or a custom list at aa_steps
            aa = build("aa", model, eps=train.eps, aa_version=settings.aa_version, seed=seed,
                       aa_attacks=settings.aa_attacks if settings.aa_version == "custom" else None,
                       aa_steps=settings.aa_steps)
            parts = components(aa, settings.aa_attacks if settings.aa_version == "custom" else None)
            records = cell_folder.records_file(cell_dir, stage)
            hook = (lambda info, s=stage: progress(s, info)) if progress else None
            # AA first: an example both break is recorded as broken by the AutoAttack component that did
            with autocast_forward(model, train.precision, torch.device(device)):  # as the trainer evaluated
                result = evaluate(model, test_set, {"aa": aa, "pgd": pgd}, n_examples=n,
                                  batch_size=settings.batch_size, progress=hook, check_masking=True, seed=seed,
                                  records=records, resume=records.is_file() and records.stat().st_size > 0)
            stages[stage] = {"epoch": summary[stage]["epoch"], "clean_acc": result.clean_acc,
                             "pgd_acc": result.robust_acc["pgd"], "aa_acc": result.robust_acc["aa"], "n": result.n,
                             "warnings": list(result.warnings), "forward_passes": result.forward_passes,
                             "backward_passes": result.backward_passes, "seconds": result.seconds,
                             "records": records.name}
    final = {"protocol": protocol(cell, n, test_n, parts), "stages": stages, "device": str(device),
             "precision": train.precision}
    if cell.init_from:
        final["init_from"] = cell.init_from
    if is_main:
        cell_folder.write_final_eval(cell_dir, final)
    return cell_folder.merge(summary, final)
