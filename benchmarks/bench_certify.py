"""What a certificate and an internal attack cost, against the forward passes they are made of, in one run on the
same models and examples.

    python benchmarks/bench_certify.py --json certify.json    # the measurement (a few minutes on 1 thread)
    python benchmarks/bench_certify.py --quick                # smoke test: 1 repeat, small budgets

The models have the paper's MNIST shape (784 pixel tokens, ``preset("mnist", layer=...)``) narrowed to
``--d-model`` channels, untrained (the cost depends on the sizes, not on the weights' values), on ``--n`` random
28 x 28 images. Rows, each the CPU time (``time.process_time``, median of ``--repeats``) and its ratio to its
reference measured in the same run:

* IBP ``verify`` of the n images at one eps, against one S4D forward pass of the same n images;
* randomized smoothing's ``certify`` of one image (n0 + n_smooth noisy samples), against S4D forward passes of
  n0 + n_smooth images in the same batches (the sampling and the counting are the difference);
* the internal attack (PGD of ``--steps`` on every S6 block, objective ``delta`` or ``state``) on the n images,
  against one S6 forward pass of the n images.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from advssm.ads import ibp
from advssm.ads.internal_attacks import internal_attack_report
from advssm.adv_train.certify import Smooth
from advssm.ssm_layers import build_model, preset


def cpu_time(fn, repeats: int) -> float:
    """The median CPU seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="images")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-smooth", type=int, default=1000, help="smoothing's n (n0 is 100)")
    parser.add_argument("--steps", type=int, default=5, help="PGD steps of the internal attack")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = 1 if args.quick else args.repeats
    n_smooth, steps = (100, 1) if args.quick else (args.n_smooth, args.steps)
    n0, batch = 100, 250
    s4d = build_model(preset("mnist", layer="s4d", d_model=args.d_model)).eval()
    s6 = build_model(preset("mnist", layer="s6", d_model=args.d_model)).eval()
    x = torch.rand(args.n, 1, 28, 28)
    with torch.no_grad():
        y = s4d(x).argmax(1)

    def forward(model, images):
        with torch.no_grad():
            model(images)

    def forward_samples(total):  # the forward passes smoothing makes, in its batches
        with torch.no_grad():
            for start in range(0, total, batch):
                s4d(x[:1].expand(min(batch, total - start), -1, -1, -1) + 0.0)

    rows = []

    def row(what, seconds, reference_what, reference):
        rows.append({"what": what, "cpu_s": seconds, "reference": reference_what, "reference_cpu_s": reference,
                     "ratio": seconds / reference})

    ref = cpu_time(lambda: forward(s4d, x), repeats)
    row(f"IBP verify, {args.n} images, eps 0.001", cpu_time(lambda: ibp.verify(s4d, x, y, 0.001), repeats),
        f"S4D forward, {args.n} images", ref)
    total = n0 + n_smooth
    row(f"smoothing certify, 1 image, n0 {n0} + n {n_smooth}",
        cpu_time(lambda: Smooth(s4d, sigma=0.25, seed=0, batch_size=batch).certify(x[:1], n0=n0, n=n_smooth,
                                                                                   alpha=0.001), repeats),
        f"S4D forward, {total} images in batches of {batch}", cpu_time(lambda: forward_samples(total), repeats))
    ref6 = cpu_time(lambda: forward(s6, x), repeats)
    for objective in ("delta", "state"):
        row(f"internal attack {objective}, PGD-{steps}, {args.n} images, 2 S6 blocks",
            cpu_time(lambda o=objective: internal_attack_report(s6, x, 0.1, steps=steps, objectives=(o,)), repeats),
            f"S6 forward, {args.n} images", ref6)
    print(f"MNIST shape (784 tokens), d_model {args.d_model}, untrained, {args.threads} thread(s), median of {repeats}")
    print("| what | CPU s | reference | reference CPU s | ratio |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['cpu_s']:.3f} | {r['reference']} | {r['reference_cpu_s']:.3f} | {r['ratio']:.1f} |")
    if args.json:
        from advssm.ssm_layers.checkpoint import atomic_write

        atomic_write(args.json, json.dumps({"settings": vars(args), "rows": rows}, indent=2).encode())


if __name__ == "__main__":
    main()
