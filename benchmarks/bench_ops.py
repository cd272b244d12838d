"""Benchmark the ops: a markdown table on stdout, optionally JSON (``--json PATH``).

    python benchmarks/bench_ops.py --sizes cpu --quick --threads 2 --json ops.json
"""
from __future__ import annotations

import argparse
import json

import torch
from advssm.ssm_layers.benchmark import SIZES, run_benchmarks, to_markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", help=f"ops to time (default: all of {', '.join(SIZES['cpu'])})")
    parser.add_argument("--sizes", default=None, choices=sorted(SIZES),
                        help="size set (default: gpu on CUDA, cpu otherwise)")
    parser.add_argument("--ref-budget", type=float, default=60.0,
                        help="skip a reference estimated above this many seconds per forward+backward")
    parser.add_argument("--quick", action="store_true", help="only the first size of each op")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="*", help="backends to time besides the reference (default: all available)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    table = SIZES[args.sizes or ("gpu" if device.type == "cuda" else "cpu")]
    if args.quick:
        table = {op: sizes[:1] for op, sizes in table.items()}
    rows = run_benchmarks(args.ops, table, args.repeats, args.backends, device=device,
                          ref_budget_s=args.ref_budget, seed=args.seed)
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
