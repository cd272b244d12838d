"""``advssm eval``: attack a checkpoint and report clean and robust accuracy."""
from __future__ import annotations

import os
from pathlib import Path

import click
import torch
from advssm.adv_train import threat_models
from advssm.adv_train.attacks import ATTACKS, NORMS, build
from advssm.adv_train.evaluation import evaluate
from advssm.adv_train.precision import PRECISIONS, autocast_forward, check_precision
from torch.utils.data import TensorDataset

from .. import interrupts
from ..errors import ConfigError
from ..experiment import jobs
from ..experiment.trained_model import load_for_eval
from ..files import write_json
from ..output import emit
from ..progress import TqdmProgress
from ..results.curves import COMPARISON_STEM, attack_at, curve_of, curve_stem, curve_table, labels, write_curves
from ..results.positions import attack_at as at_start
from ..results.positions import parse_sweep, study_of, sweep_table, write_sweep


def build_attacks(names: str, model, eps: float, steps: int, seed: int, alpha: float | None = None,
                  norm: str = "Linf", threat_model=None) -> dict:
    """``"pgd,aa"`` -> {"pgd-10": PGD(...), "aa": AutoAttack(...)} through ``advssm.adv_train.attacks.build``;
    unknown names are a ConfigError. ``steps`` and ``alpha`` are PGD's (default eps / 4); AutoAttack and its
    parts run at the paper's budgets; ``threat_model`` masks every attack.

        build_attacks("fgsm,pgd", model, 0.1, steps=10, seed=0)    # {"fgsm": FGSM, "pgd-10": PGD}
    """
    chosen = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in ATTACKS]
    if unknown or not chosen:
        raise ConfigError(f"unknown attack {unknown[0] if unknown else names!r}; choose from {', '.join(ATTACKS)}")
    return {name if name != "pgd" else f"pgd-{steps}":
            build(name, model, eps=eps, norm=norm, seed=seed, threat_model=threat_model,
                  **({"steps": steps, "alpha": alpha} if name == "pgd" else {}))
            for name in chosen}


class ThreatModelType(click.ParamType):
    """``--threat window:START:LEN | prefix:K | suffix:K | random:K[:SEED] | patch:TOP:LEFT:SIZE | full``."""

    name = "THREAT"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, threat_models.ThreatModel):
            return value
        try:
            return threat_models.parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


class EpsList(click.ParamType):
    """``0.03`` or ``0.01,0.02,0.05``: budgets > 0, each given once (Linf ones also <= 1, checked with --norm:
    inputs live in [0, 1])."""

    name = "EPS[,EPS...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        values = []
        for part in str(value).split(","):
            try:
                eps = float(part)
            except ValueError:
                self.fail(f"{part.strip()!r} is not a number (write e.g. 0.03 or 0.01,0.02,0.05)", param, ctx)
            if not 0 < eps < float("inf"):
                self.fail(f"{eps:g} is not in the range 0<x", param, ctx)
            if eps in values:
                self.fail(f"{eps:g} is listed twice", param, ctx)
            values.append(eps)
        return tuple(values)


def _architecture(model, cell) -> str:
    config = model.config
    ads = f", AdS {config.transform_options.get('activation')}" if config.transform == "ads" else ""
    return f"{config.layer} (d_model {config.d_model}, d_state {config.d_state}, {config.n_layers} layers{ads})"


@click.command("eval")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--attacks", default="pgd,aa", show_default=True,
              help=f"Comma-separated: {', '.join(ATTACKS)}.")
@click.option("--norm", type=click.Choice(NORMS), default="Linf", show_default=True,
              help="Threat model's norm (L2 and L1 need --eps; L1 is the L1 ball within the [0, 1] box).")
@click.option("--threat", type=ThreatModelType(),
              help=f"Positions the attacks may change: {' | '.join(threat_models.SYNTAX.values())} | full "
                   "(default full). Positions are tokens: time steps, or an image's pixels in raster order.")
@click.option("--position-sweep", "position_sweep",
              help="LEN[:STRIDE]: robust accuracy against where a window of LEN positions sits (stride: LEN); "
                   "a table, <checkpoint>.positions.json/.md/.png.")
@click.option("--n", "n", type=click.IntRange(min=1),
              help="Evaluate the first N test examples (default: those of the run's table row; all without a run).")
@click.option("--eps", "eps_values", type=EpsList(),
              help="Budget in --norm, Linf ones in (0, 1] (default: the run's); several, comma-separated, give a "
                   "robustness curve: one clean pass, every attack at every eps on the same examples.")
@click.option("--alpha", type=click.FloatRange(0, min_open=True),
              help="PGD step size at every eps (default: the run's with the run's eps, else eps/4).")
@click.option("--steps", type=click.IntRange(min=1), help="PGD steps (default: the run's eval_pgd_steps, else 10).")
@click.option("--dataset", help="Data set (default: the run's, recorded in the checkpoint).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--device", help="cpu, cuda or cuda:N (default: the run's device where it exists, else cpu).")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="The model's forward under autocast, as the run trained and evaluated it (default: the run's "
                   "precision, recorded in the checkpoint's cell; fp32 for a checkpoint without one). The attacks' "
                   "arithmetic stays fp32.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeds the attacks, per batch.")
@click.option("--records", "records_path", type=click.Path(dir_okay=False),
              help="Per-example results, JSONL (default: <checkpoint>.eval.jsonl beside it; one checkpoint only).")
@click.option("--curves-out", type=click.Path(file_okay=False),
              help="Several checkpoints: the folder for their curves on one plot, curves.json / .md / .png "
                   "(default: the current folder).")
@click.option("--resume", is_flag=True, help="Continue an interrupted evaluation from its last finished batch.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output; with one eps also writes <checkpoint>.robustbench.json "
                   "(RobustBench's model info; --robustbench: elsewhere).")
@click.option("--robustbench", "robustbench", type=click.Path(dir_okay=False),
              help="With --json: the file for RobustBench's model info (default: <checkpoint>.robustbench.json "
                   "beside the checkpoint).")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def eval_command(checkpoints, attacks, norm, threat, position_sweep, n, eps_values, alpha, steps, dataset, data_dir,
                 batch_size, device, precision, seed, records_path, curves_out, resume, as_json, robustbench,
                 progress):
    """Clean and robust accuracy of a checkpoint under the chosen attacks (worst case over them too).

    One rule for every number: an example counts as robust under an attack when it is classified
    correctly both clean and attacked; all attacks run on the same examples. Each example's result
    goes to a records file; --resume continues an interrupted evaluation with the same result.

    Several eps (--eps 0.01,0.02,0.05) give a robustness curve: accuracy against eps as a table, JSON and a
    plot (<checkpoint>.curve.json / .md / .png); several checkpoints are compared on one plot (curves.*).

    \b
    Examples:
      advssm eval runs/X/pgd-at/best.safetensors
      advssm eval model.safetensors --dataset mnist --data-dir data --eps 0.3 --attacks pgd,apgd-ce,square --n 1000
      advssm eval best.safetensors --attacks aa --json
      advssm eval best.safetensors --attacks aa --resume   # after Ctrl-C
      advssm eval best.safetensors --eps 0.01,0.02,0.05,0.1 --attacks pgd,aa
      advssm eval runs/X/standard/best.safetensors runs/X/pgd-at/best.safetensors --eps 0.02,0.05,0.1
      advssm eval best.safetensors --threat suffix:16 --attacks pgd,apgd-ce      # the last 16 steps only
      advssm eval best.safetensors --norm L1 --eps 12 --attacks aa
      advssm eval best.safetensors --position-sweep 64:32 --attacks pgd        # accuracy against position
    """
    if norm != "Linf" and eps_values is None:
        raise ConfigError(f"--norm {norm} needs --eps: the run's eps is an Linf budget")
    if norm == "Linf" and eps_values and max(eps_values) > 1:
        raise click.BadParameter(f"{max(eps_values):g} is not in the range 0<x<=1 (Linf: inputs live in [0, 1])",
                                 param_hint="'--eps'")
    sweep = None
    if position_sweep is not None:
        sweep = parse_sweep(position_sweep)
        if threat is not None or len(checkpoints) > 1 or (eps_values is not None and len(eps_values) > 1):
            raise ConfigError("--position-sweep moves its own window over one checkpoint at one eps: drop --threat, "
                              "extra checkpoints and extra eps")
    if records_path and len(checkpoints) > 1:
        raise ConfigError("--records names one file; with several checkpoints each one's records go to "
                          "<checkpoint>.eval.jsonl beside it: drop --records")
    one_result = sweep is None and len(checkpoints) == 1 and (eps_values is None or len(eps_values) == 1)
    if robustbench and not (as_json and one_result):
        raise ConfigError("--robustbench names the RobustBench file that --json writes for one checkpoint at one eps")
    # every output's folder is checked before anything is evaluated (the result of an hour's AutoAttack was lost
    # to a read-only folder): the records beside each checkpoint, and the RobustBench file
    for checkpoint in checkpoints:
        check_writable(Path(records_path) if records_path else Path(checkpoint).with_suffix(".eval.jsonl"),
                       "--records")
    if as_json and one_result:
        check_writable(robustbench_file(checkpoints[0], robustbench), "--robustbench")
    options = {"attacks": attacks, "norm": norm, "threat": threat, "sweep": sweep, "n": n, "alpha": alpha,
               "steps": steps, "dataset": dataset, "data_dir": data_dir,
               "batch_size": batch_size, "device": device, "precision": precision, "seed": seed, "resume": resume,
               "progress": progress}
    curve_mode = len(checkpoints) > 1 or (eps_values is not None and len(eps_values) > 1)
    done = []
    try:
        with interrupts.handled():  # Ctrl-C and SIGTERM: KeyboardInterrupt, never lost
            for checkpoint in checkpoints:
                records = Path(records_path) if records_path else Path(checkpoint).with_suffix(".eval.jsonl")
                done.append(_evaluate_checkpoint(checkpoint, eps_values, records, **options))
    except KeyboardInterrupt:
        again = " ".join(str(c) for c in checkpoints)
        click.echo(f"\ninterrupted; continue with: advssm eval {again} --resume (same options)", err=True)
        raise SystemExit(130) from None
    if sweep is not None:
        _emit_sweep(*done[0], as_json)
    elif not curve_mode:
        _emit_one(*done[0], as_json, robustbench)
    else:
        _emit_curves(done, checkpoints, curves_out, as_json)


def _evaluate_checkpoint(checkpoint, eps_values, records, *, attacks, norm, threat, sweep, n, alpha, steps, dataset,
                         data_dir, batch_size, device, precision, seed, resume, progress):
    """(data, result, model, cell, eps list, attack names): one checkpoint evaluated at every eps in one
    ``evaluate()`` call (the attacks of eps e are named ``name@e`` when there are several)."""
    run_eps = eps_values is None
    model, x, y, first_eps, cell, device = load_for_eval(checkpoint, dataset, data_dir, n,
                                                         None if run_eps else eps_values[0], device)
    eps_list = [first_eps] if run_eps else list(eps_values)
    if cell is not None:  # the run's PGD, so its numbers can be reproduced
        steps = steps or int(cell.train.eval_pgd_steps)
    steps = steps or 10
    # the run's precision unless told otherwise, so eval reproduces the final evaluation's numbers
    precision = precision or (cell.train.precision if cell is not None else "fp32")
    try:
        check_precision(precision, torch.device(device))
    except ValueError as error:
        raise ConfigError(f"--precision: {error}") from None
    if threat is not None:
        try:
            threat.mask(x[:1])  # a threat model that does not fit the data is refused before any attack runs
        except ValueError as error:
            raise ConfigError(f"--threat: {error}") from None
    windows = []
    if sweep is not None:
        try:
            windows = threat_models.sweep(threat_models.n_positions(x), *sweep)
        except ValueError as error:
            raise ConfigError(f"--position-sweep: {error}") from None
    chosen, names = {}, []
    for eps in eps_list:
        step = alpha
        if step is None and cell is not None and run_eps:
            step = float(cell.train.alpha)
        if windows:  # one set of attacks per window position, all in one evaluation
            for window in windows:
                built = build_attacks(attacks, model, eps, steps, seed, step, norm, window)
                chosen.update({at_start(k, dict(window.params)["start"]): a for k, a in built.items()})
            names = list(built)
            continue
        built = build_attacks(attacks, model, eps, steps, seed, step, norm, threat)
        names = list(built)
        chosen.update(built if len(eps_list) == 1 else {attack_at(k, eps): a for k, a in built.items()})
    bar = TqdmProgress("eval", enabled=progress)

    def on_progress(info):
        interrupts.raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt Python swallowed stops here
        bar.on_stage(info["stage"], info["done"], info["total"] or 0)

    # one evaluation per records file at a time, as one command per run folder: two at once interleaved their
    # lines (352 lines for 200 examples), and the second one's unlink below removed the first one's records
    with jobs.file_lock(records, f"advssm eval {checkpoint}"):
        if resume and not records.is_file():
            raise ConfigError(f"--resume: no records at {records} to continue; run without --resume")
        if not resume and records.is_file():
            records.unlink()  # a new evaluation: the records of an earlier one would be refused by evaluate
        try:
            with autocast_forward(model, precision, torch.device(device)):
                result = evaluate(model, TensorDataset(x, y), chosen, batch_size=batch_size, seed=seed,
                                  records=records, resume=resume, progress=on_progress)
        finally:
            bar.close()
    data = {"checkpoint": str(checkpoint), "eps": eps_list[0] if len(eps_list) == 1 else eps_list, "n": len(x),
            "norm": norm, "threat_model": threat.name if threat is not None else "full",
            "device": str(device), "precision": precision, "records": str(records), **result.to_dict()}
    if windows:
        data["positions"] = study_of(checkpoint, result, windows, names, records, norm=norm, eps=eps_list[0],
                                     length=sweep[0], stride=sweep[1] or sweep[0])
    return data, result, model, cell, eps_list, names, dataset


def _emit_one(data, result, model, cell, eps_list, names, dataset, as_json, robustbench=None) -> None:
    """One checkpoint at one eps: the accuracies, and with --json the RobustBench record."""
    checkpoint = data["checkpoint"]
    failed = None
    if as_json:
        info = {"architecture": _architecture(model, cell), "dataset": dataset or (cell.data.dataset if cell else None)}
        record = result.to_robustbench(**info)
        path = robustbench_file(checkpoint, robustbench)
        data["robustbench"], data["robustbench_file"] = record, str(path)
        try:
            write_json(path, record)
        except OSError as exc:  # the result is printed below all the same: never lost to a write error
            data["robustbench_file"], failed = None, f"{path} could not be written ({exc.strerror or exc})"
    threat = "" if data["threat_model"] == "full" else f"  threat {data['threat_model']}"
    norm = "" if data["norm"] == "Linf" else f"  norm {data['norm']}"
    precision = "" if data["precision"] == "fp32" else f"  precision {data['precision']}"
    lines = [f"checkpoint {checkpoint}  eps {eps_list[0]:g}{norm}{threat}  n {data['n']}  device {data['device']}"
             f"{precision}",
             f"{'clean':10} {100 * result.clean_acc:6.2f}%"]
    lines += [f"{name:10} {100 * acc:6.2f}%" for name, acc in result.robust_acc.items()]
    if len(result.robust_acc) > 1:
        lines.append(f"{'worst':10} {100 * result.worst_acc:6.2f}%")
    lines += [f"warning: {w}" for w in result.warnings]
    lines.append(f"per-example results: {data['records']}")
    emit(data, as_json, "\n".join(lines))
    if failed:
        raise RuntimeError(f"the evaluation finished (its result is printed above) but {failed}; write it elsewhere "
                           "with --robustbench PATH")


def robustbench_file(checkpoint, given) -> Path:
    """Where ``--json`` writes RobustBench's model info: ``--robustbench PATH``, else beside the checkpoint."""
    return Path(given) if given else Path(checkpoint).with_suffix(".robustbench.json")


def check_writable(path, option: str) -> None:
    """Refuse, before anything is evaluated, an output file whose folder cannot be written."""
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # atomic_write creates the missing folders under the first existing one
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: the folder {folder} is not writable; give another file with "
                          f"{option} PATH")


def _emit_curves(done, checkpoints, curves_out, as_json) -> None:
    """Robustness curves: each checkpoint's beside it (<checkpoint>.curve.*), several on one plot (curves.*)."""
    curves, files = [], {}
    for (data, result, _, _, eps_list, names, _), label in zip(done, labels([d[0]["checkpoint"] for d in done])):
        curve = curve_of(label, data["checkpoint"], result, eps_list, names, Path(data["records"]))
        curve["device"] = data["device"]
        curves.append(curve)
        files[label] = write_curves([curve], curve_stem(data["checkpoint"]))
    comparison = None
    if len(curves) > 1:
        comparison = write_curves(curves, Path(curves_out or ".") / COMPARISON_STEM)
    lines = [f"{c['label']}: {c['checkpoint']}  n {c['n']}  device {c['device']}" for c in curves]
    lines += ["", "accuracy (%) against eps (eps 0 = clean; worst = over the attacks at that eps)", "",
              curve_table(curves), ""]
    lines += [f"warning ({c['label']}): {w}" for c in curves for w in c["warnings"]]
    lines += [f"curve of {label}: {f['json']} (.md, .png)" for label, f in files.items()]
    if comparison:
        lines.append(f"comparison: {comparison['png']} ({comparison['json']}, {comparison['md']})")
    emit({"curves": curves, "files": files, "comparison": comparison}, as_json, "\n".join(lines))


def _emit_sweep(data, result, model, cell, eps_list, names, dataset, as_json) -> None:
    """The robustness-vs-position study: its table, and its files beside the checkpoint."""
    study = data["positions"]
    files = write_sweep(study, data["checkpoint"])
    lines = [f"checkpoint {data['checkpoint']}  {study['norm']} eps {study['eps']:g}  windows of {study['length']} "
             f"positions, stride {study['stride']}  n {data['n']}  device {data['device']}", "",
             "accuracy (%) with only the window's positions attacked (worst = over the attacks at that window)", "",
             sweep_table(study), ""]
    lines += [f"warning: {w}" for w in study["warnings"]]
    lines.append(f"study: {files['json']} (.md, .png); per-example results: {data['records']}")
    emit({"positions": study, "files": files}, as_json, "\n".join(lines))
