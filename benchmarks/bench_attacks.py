"""Benchmark PGD-10 and AutoAttack on the paper's MNIST S4D model: a markdown table on stdout, optionally JSON.

    python benchmarks/bench_attacks.py --quick --json attacks.json      # smoke test, about a minute
    python benchmarks/bench_attacks.py --batch 16 --json attacks.json   # the measurement

What is measured, on the CPU, for one batch of random 28x28 images in [0, 1] (the model is
``build_model(preset("mnist", layer="s4d"))``: d_model 128, d_state 32, 2 layers, sequence length 784),
with the labels set to the model's own predictions so that every point starts correctly classified:

- references: one forward pass, and one forward+backward to the input (the unit every gradient attack
  repeats); every time is also given as a multiple of that forward+backward, measured in the same run.
- PGD-10 (Linf, eps 0.3, step 0.04, random start: the paper's MNIST evaluation) on the batch.
- each standard AutoAttack component (APGD-CE, APGD-T, FAB-T, Square) on points that survive it: the
  component runs at a tiny eps (``--survive-eps``) where it breaks nothing, so it spends its whole budget
  on every point, as it does on a robust model. AutoAttack only attacks the points still classified
  correctly: with random labels an untrained model gets about 90 % of them wrong, and with a model that
  attacks break easily the later stages get nothing, so timing AutoAttack as such says little. The sum
  of the components is the cost of standard AutoAttack on a batch of robust points.
- the real cascade at eps 0.3 on the same batch, with how many points each stage attacked and broke
  (what it costs on this particular untrained model).

Full budgets cost thousands of forward+backward passes per batch. When the estimate (from the measured
references) exceeds ``--time-budget``, every component runs with its iterations scaled down by one
factor and its time is extrapolated linearly in the number of model evaluations (each iteration costs
the same when no point drops out); the table says so row by row. The cascade is then run at the same
reduced budgets and its time is not extrapolated.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from advssm.adv_train.attacks import APGD, APGDT, FAB, PGD, AutoAttack, Square, build_attack
from advssm.ssm_layers import build_model, preset

EPS, ALPHA = 0.3, 0.04  # the paper's MNIST protocol
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
FULL = {"steps": 100, "targets": 9, "queries": 5000}  # the standard version's budgets


def _time(fn, repeats):
    """Median wall time of ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def budget_at(fraction):
    """The component budgets scaled by ``fraction`` (targets kept: the per-target loop is part of the cost)."""
    if fraction >= 1:
        return dict(FULL)
    return {"steps": max(1, round(FULL["steps"] * fraction)), "targets": FULL["targets"],
            "queries": max(10, round(FULL["queries"] * fraction))}


def evaluations(name, budget):
    """(input gradients, forward-only passes) one component makes per point at ``budget``."""
    steps, targets = budget["steps"], budget["targets"]
    return {"apgd-ce": (steps + 1, 1), "apgd-t": (targets * (steps + 1), 1),
            "fab-t": (targets * steps, targets * steps + 1), "square": (0, budget["queries"] + 2)}[name]


def describe(name, budget):
    return {"apgd-ce": f"{budget['steps']} steps", "apgd-t": f"{budget['targets']} targets x {budget['steps']} steps",
            "fab-t": f"{budget['targets']} targets x {budget['steps']} steps",
            "square": f"{budget['queries']} queries"}[name]


def make_component(name, model, eps, budget, seed):
    """A standard AutoAttack component; at the full budget exactly what ``AutoAttack(version="standard")`` runs."""
    if budget == FULL:
        return build_attack(name, model, "Linf", eps, seed)
    steps, targets = budget["steps"], budget["targets"]
    return {"apgd-ce": lambda: APGD(model, eps=eps, steps=steps, loss="ce", seed=seed),
            "apgd-t": lambda: APGDT(model, eps=eps, steps=steps, n_target_classes=targets, seed=seed),
            "fab-t": lambda: FAB(model, eps=eps, steps=steps, n_target_classes=targets, seed=seed),
            "square": lambda: Square(model, eps=eps, n_queries=budget["queries"], seed=seed)}[name]()


def run(batch=16, repeats=3, quick=False, time_budget=420.0, survive_eps=1e-4, threads=None, seed=0):
    """All the measurements; returns the JSON-ready result."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_model(preset("mnist", layer="s4d")).eval()
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)  # every point starts correct, so every stage has work

    def forward():
        with torch.no_grad():
            return model(x)

    def forward_backward():
        x_in = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)[0]

    forward_backward()  # warm-up: first-call allocations and FFT plans
    t_fwd, _ = _time(forward, max(repeats, 3))
    t_fb, _ = _time(forward_backward, max(repeats, 3))

    def bracketed(fn, n):
        """Median time of ``fn`` over ``n`` calls, and a forward+backward reference timed just before and
        just after: on a shared machine the load drifts, and the ratio of the two cancels most of it."""
        before, _ = _time(forward_backward, 3)
        seconds, out = _time(fn, n)
        after, _ = _time(forward_backward, 3)
        return seconds, out, (before + after) / 2

    def estimate(name, budget):
        grads, fwds = evaluations(name, budget)
        return grads * t_fb + fwds * t_fwd

    # Components are timed `repeats` times, the cascade once more at most their sum.
    full_estimate = (repeats + 1) * sum(estimate(n, FULL) for n in COMPONENTS)
    fraction = 0.03 if quick else min(1.0, time_budget / full_estimate)
    budget = budget_at(fraction)
    rows = [
        {"name": "forward (reference)", "points": batch, "budget": "1 pass", "seconds": t_fwd},
        {"name": "forward+backward to the input (reference)", "points": batch, "budget": "1 pass", "seconds": t_fb},
    ]
    pgd = PGD(model, eps=EPS, alpha=ALPHA, steps=10, random_start=True, seed=seed)
    t_pgd, x_adv, ref = bracketed(lambda: pgd(x, y), repeats)
    with torch.no_grad():
        broken = int((model(x_adv).argmax(1) != y).sum())
    rows.append({"name": "PGD-10 (eps 0.3)", "points": batch, "budget": "10 steps", "seconds": t_pgd,
                 "attacked": batch, "broken": broken, "reference_seconds": ref})

    component_rows = []
    for name in COMPONENTS:
        attack = make_component(name, model, survive_eps, budget, seed)
        measured, x_adv, ref = bracketed(lambda attack=attack: attack(x, y), repeats)
        with torch.no_grad():
            broken = int((model(x_adv).argmax(1) != y).sum())
        scale = estimate(name, FULL) / estimate(name, budget)
        row = {"name": f"{name} (eps {survive_eps:g}: every point survives)", "points": batch,
               "budget": describe(name, FULL), "seconds": measured * scale, "attacked": batch, "broken": broken,
               "reference_seconds": ref}
        if scale != 1:
            row |= {"timed_budget": describe(name, budget), "measured_seconds": measured, "extrapolated_by": scale}
        component_rows.append(row)
    rows += component_rows
    aa_row = {"name": "AutoAttack standard on robust points (sum of the four)", "points": batch,
              "budget": "standard", "seconds": sum(r["seconds"] for r in component_rows),
              "timed_as": "sum of the four rows above",
              "x_fwd_bwd": sum(r["seconds"] / r["reference_seconds"] for r in component_rows)}
    rows.append(aa_row)

    stages = [make_component(name, model, EPS, budget, seed) for name in COMPONENTS]
    auto = AutoAttack(model, norm="Linf", eps=EPS, version="custom", attacks=stages, seed=seed)
    t_cascade, _, ref = bracketed(lambda: auto(x, y), 1)
    cascade, left = [], auto.last_n_correct
    for name, key in zip(COMPONENTS, auto.last_broken):
        cascade.append({"stage": name, "budget": describe(name, budget), "attacked": left,
                        "broken": auto.last_broken[key]})
        left -= auto.last_broken[key]
    rows.append({"name": "AutoAttack cascade at eps 0.3 (this untrained model)", "points": batch,
                 "budget": "standard" if budget == FULL else f"reduced ({describe('apgd-ce', budget)}, ...)",
                 "seconds": t_cascade, "attacked": auto.last_n_correct, "broken": sum(auto.last_broken.values()),
                 "reference_seconds": ref})

    for row in rows:
        row["per_point_seconds"] = row["seconds"] / row["points"]
        row.setdefault("x_fwd_bwd", row["seconds"] / row.get("reference_seconds", t_fb))
    notes = [
        "labels = the model's own predictions: every point starts correctly classified",
        f"components timed at eps {survive_eps:g}, where nothing breaks: the cost of AutoAttack on robust points",
        "x fwd+bwd: seconds / one forward+backward to the input on the same batch, timed just before and after "
        "each row (the machine's load drifts; the ratio is the number to compare, seconds depend on the load)",
    ]
    if budget != FULL:
        notes.append(f"full budgets were estimated at {full_estimate:.0f} s for {repeats} repeats, over the "
                     f"{time_budget:.0f} s budget: components ran with iterations scaled by {fraction:.3g} "
                     "and their times were extrapolated linearly in model evaluations to the standard budget")
    if any(r["broken"] for r in component_rows):
        notes.append("WARNING: some points broke at the survive eps, so those rows undercount a robust batch")
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "model": "s4d mnist preset",
            "batch": batch, "eps": EPS, "survive_eps": survive_eps, "repeats": repeats, "quick": quick,
            "budget_fraction": min(fraction, 1.0), "rows": rows, "cascade": cascade, "notes": notes}


def to_markdown(result):
    """The rows, the cascade and the notes as markdown."""
    def cell(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| measurement | points | budget | seconds | s / point | x fwd+bwd | attacked | broken | timed as |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "timed_budget" in r:
            timed = f"{r['timed_budget']}: {r['measured_seconds']:.3g} s, x{r['extrapolated_by']:.3g}"
        else:
            timed = r.get("timed_as", "measured")
        lines.append(f"| {r['name']} | {r['points']} | {r['budget']} | {r['seconds']:.3g} | "
                     f"{r['per_point_seconds']:.3g} | {r['x_fwd_bwd']:.1f} | {cell(r.get('attacked'), 'd')} | "
                     f"{cell(r.get('broken'), 'd')} | {timed} |")
    lines += ["", "| cascade stage (eps 0.3) | budget | points attacked | points broken |", "|---|---|---|---|"]
    lines += [f"| {c['stage']} | {c['budget']} | {c['attacked']} | {c['broken']} |" for c in result["cascade"]]
    lines += [""] + [f"- {note}" for note in result["notes"]]
    lines.append(f"- torch {result['torch']}, {result['threads']} threads, median of {result['repeats']} repeats"
                 + (" (--quick: reduced budgets, smoke test only)" if result["quick"] else ""))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="batch 4, 1 repeat, budgets scaled by 0.03 (smoke test)")
    parser.add_argument("--time-budget", type=float, default=420.0,
                        help="seconds the component timings may take before budgets are scaled down and extrapolated")
    parser.add_argument("--survive-eps", type=float, default=1e-4,
                        help="eps at which the components are timed (small enough that no point breaks)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or not math.isfinite(args.time_budget) or args.time_budget <= 0:
        parser.error("--batch and --repeats must be >= 1 and --time-budget > 0")
    batch, repeats = (min(args.batch, 4), 1) if args.quick else (args.batch, args.repeats)
    result = run(batch, repeats, args.quick, args.time_budget, args.survive_eps, args.threads, args.seed)
    print(to_markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
