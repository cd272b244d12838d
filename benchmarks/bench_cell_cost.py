"""What one cell of the paper's grid costs per epoch, measured on this machine's device.

For each paper preset (its model, its data shape, its protocol: batch 256, PGD-10 training attack, PGD-10
evaluation of the whole test set every epoch) and each chosen layer and method, the cell's own Trainer runs
one short epoch on random inputs of the data set's shape, with a small batch so that it fits a CPU's time:
``--batch`` examples per step, ``--steps`` steps, then the per-epoch PGD evaluation on ``--batch`` examples.
The time per example of each part is then scaled to the data set's sizes:

    epoch ~= train_s_per_example * n_train + eval_s_per_example * n_test

which assumes the time grows linearly with the batch (true on a CPU near full use, pessimistic on a GPU,
where a batch of 256 is much cheaper per example than a small one; measure on the GPU itself for GPU
numbers). AutoAttack every 4 epochs (the paper's aa_every, on 2000 examples) and the final evaluation are
not included. Medians of ``--repeats`` runs; a table on stdout and JSON with ``--json``.

``--patch-sizes`` and ``--scans`` add the vision axes (patch tokens, scan orders) to each preset's grid, so a
patch model and the paper's pixel model of the same layer and width are measured in one run; the column
"x vs pixels" is the pixel cell's epoch time over this cell's (same preset, layer, scan and method).

    python benchmarks/bench_cell_cost.py --presets paper-mnist --layers s4d --methods standard,pgd-at
    python benchmarks/bench_cell_cost.py --presets paper-cifar10 --layers s4d --methods pgd-at --patch-sizes none,4
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time

import torch
from advssm.adv_train.trainer import Trainer
from advssm.cli.experiment.cell_runner import build_cell_model
from advssm.cli.experiment.spec import resolve_experiment
from torch.utils.data import TensorDataset

# the data sets' image sides and sizes (train / test examples) as the paper uses them; channels and classes are
# the cell's model's (decided by the data set when the spec is resolved)
SIZES = {"mnist": (28, 60_000, 10_000), "cifar10": (32, 50_000, 10_000), "tinyimagenet": (64, 25_000, 2_500)}


def measure(cell, batch: int, steps: int, device: str) -> dict:
    """Seconds per example of training and of the per-epoch evaluation, for one run of the cell's Trainer."""
    side, _, _ = SIZES[cell.data.dataset]
    shape, n_classes = (cell.model.d_input, side, side), cell.model.n_classes
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch * steps + batch, *shape, generator=g)
    y = torch.randint(0, n_classes, (len(x),), generator=g)
    model = build_cell_model(cell)
    config = dataclasses.replace(cell.train, epochs=1, batch_size=batch, aa_every=0, eval_n=batch, device=device)
    trainer = Trainer(model, TensorDataset(x[:-batch], y[:-batch]), TensorDataset(x[-batch:], y[-batch:]), config,
                      callbacks=[object()])
    start = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - start
    metrics = trainer.history[-1]
    return {"train_s_per_example": metrics["train_time"] / (batch * steps),
            "eval_s_per_example": (total - metrics["train_time"]) / batch}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="paper-mnist,paper-cifar10,paper-tinyimagenet")
    parser.add_argument("--layers", default="s4d")
    parser.add_argument("--methods", default="standard,pgd-at")
    parser.add_argument("--patch-sizes", help="Comma-separated patch sizes, none = pixels (default: the preset's).")
    parser.add_argument("--scans", help="Comma-separated scan orders (default: the preset's).")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", dest="json_path", help="Also write the results as JSON here.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets.split(","):
        grid = {"layer": args.layers.split(","), "method": args.methods.split(",")}
        if args.patch_sizes:
            grid["patch_size"] = [p if p == "none" else int(p) for p in args.patch_sizes.split(",")]
        if args.scans:
            grid["scan"] = args.scans.split(",")
        spec = resolve_experiment({"preset": preset, "grid": grid})
        for cell in spec.cells():
            measure(cell, args.batch, 1, args.device)  # warm-up: first calls (allocations, kernel checks)
            runs = [measure(cell, args.batch, args.steps, args.device) for _ in range(args.repeats)]
            train = statistics.median(r["train_s_per_example"] for r in runs)
            evaluate = statistics.median(r["eval_s_per_example"] for r in runs)
            _, n_train, n_test = SIZES[cell.data.dataset]
            epoch_h = (train * n_train + evaluate * n_test) / 3600
            rows.append({"preset": preset, "cell": cell.name, "epochs": cell.train.epochs,
                         "pixel_key": (preset, cell.model.layer, cell.model.scan, cell.train.method),
                         "patch_size": cell.model.patch_size,
                         "train_ms_per_example": 1000 * train, "eval_ms_per_example": 1000 * evaluate,
                         "epoch_hours": epoch_h, "cell_hours": epoch_h * cell.train.epochs})
            print(f"{preset} {cell.name}: train {1000 * train:.1f} ms/example, eval {1000 * evaluate:.1f} ms/example, "
                  f"{epoch_h:.2f} h per epoch", file=sys.stderr, flush=True)  # a cut-off run keeps its rows
    context = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "batch": args.batch, "steps": args.steps,
               "repeats": args.repeats}
    print(f"device {args.device}, {context['threads']} threads, torch {torch.__version__}; medians of "
          f"{args.repeats} runs of {args.steps} steps of {args.batch} examples")
    pixels = {r["pixel_key"]: r["epoch_hours"] for r in rows if r["patch_size"] is None}
    for r in rows:  # how many times cheaper per epoch than the pixel model measured in this run, if one was
        key = r.pop("pixel_key")
        r["x_vs_pixels"] = pixels[key] / r["epoch_hours"] if key in pixels else None
    print("| preset | cell | train ms/example | eval ms/example | hours/epoch | epochs | hours/cell | x vs pixels |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "" if r["x_vs_pixels"] is None else f"{r['x_vs_pixels']:.1f}"
        print(f"| {r['preset']} | {r['cell']} | {r['train_ms_per_example']:.1f} | {r['eval_ms_per_example']:.1f} | "
              f"{r['epoch_hours']:.2f} | {r['epochs']} | {r['cell_hours']:.0f} | {ratio} |")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"context": context, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
