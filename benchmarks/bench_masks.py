"""What a masked threat model costs: each attack on the full input against the same attack restricted to a
window of positions and to an image patch, in one run, on the same model and examples.

    python benchmarks/bench_masks.py --json masks.json        # the measurement (a few minutes on 1 thread)
    python benchmarks/bench_masks.py --quick                  # smoke test: 1 repeat, small budgets

The model is an S4D of the paper's MNIST shape (784 pixel tokens, ``preset("mnist", layer="s4d")``) narrowed
to ``--d-model`` channels, untrained (an attack's cost depends on the model's size and on how many examples it
breaks early, not on the weights' values), on ``--n`` random 28 x 28 images labelled with the model's own
prediction, so that every example is attacked. Per attack (PGD-10, APGD-CE, FAB-T with 3 targets, Square;
Linf eps 0.3, the paper's MNIST budget) and threat model (full; window(start=392,length=64);
patch(top=10,left=10,size=8)): the CPU time (``time.process_time``, median of ``--repeats`` calls, the threat
models interleaved), the ratio to the full threat model, forward and backward passes per example (the attack's
own count) and the fraction of the examples broken. The masked attacks do the same work per step; they can
cost more in all because fewer examples are broken early (APGD, FAB and Square stop attacking an example once
it is fooled). The model is ``--d-model`` 32 and ``--n`` 16 images by default; fewer images (``--n 8``) halve
the time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from advssm.adv_train.attacks import build
from advssm.adv_train.threat_models import patch, window
from advssm.ssm_layers import build_model, preset

EPS = 0.3  # the paper's MNIST budget
THREATS = {"full": None, "window(start=392,length=64)": window(392, 64),
           "patch(top=10,left=10,size=8)": patch(10, 10, 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="images")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = 1 if args.quick else args.repeats
    steps = 5 if args.quick else 20
    model = build_model(preset("mnist", layer="s4d", d_model=args.d_model)).eval()
    x = torch.rand(args.n, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    attacks = {"pgd-10": {"steps": 10}, f"apgd-ce ({steps} steps)": {"aa_steps": steps},
               f"fab-t ({steps} steps, 3 targets)": {"aa_steps": steps},
               f"square ({50 * steps} queries)": {"aa_steps": steps}}
    rows = []
    for label, settings in attacks.items():
        name = label.split(" ")[0].replace("-10", "")
        times = {threat: [] for threat in THREATS}
        results = {}
        for _ in range(repeats):
            for threat, tm in THREATS.items():
                attack = build(name, model, eps=EPS, seed=0, threat_model=tm, **settings)
                if name == "fab-t":
                    attack.n_target_classes = 3
                start = time.process_time()
                x_adv = attack(x, y)
                times[threat].append(time.process_time() - start)
                with torch.no_grad():
                    broken = float((model(x_adv).argmax(1) != y).float().mean())
                forward, backward = attack.passes()
                results[threat] = {"broken": broken, "forward_per_example": forward / args.n,
                                   "backward_per_example": backward / args.n}
        full = statistics.median(times["full"])
        for threat in THREATS:
            seconds = statistics.median(times[threat])
            rows.append({"attack": label, "threat_model": threat, "cpu_s": seconds, "ratio_to_full": seconds / full,
                         **results[threat]})
    print(f"S4D d_model {args.d_model}, 784 tokens, {args.n} images, Linf eps {EPS}, {args.threads} thread(s), "
          f"median of {repeats}")
    print("| attack | threat model | CPU s | / full | fwd/ex | bwd/ex | broken |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['attack']} | {r['threat_model']} | {r['cpu_s']:.2f} | {r['ratio_to_full']:.2f} | "
              f"{r['forward_per_example']:.0f} | {r['backward_per_example']:.0f} | {100 * r['broken']:.0f} % |")
    if args.json:
        from advssm.ssm_layers.checkpoint import atomic_write

        atomic_write(args.json, json.dumps({"settings": vars(args), "rows": rows}, indent=2).encode())


if __name__ == "__main__":
    main()
