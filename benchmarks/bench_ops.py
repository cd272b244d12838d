"""Benchmark the ops: a markdown table on stdout, optionally JSON (``--json PATH``).

    python benchmarks/bench_ops.py --sizes cpu --quick --threads 2 --json ops.json
    python benchmarks/bench_ops.py --scan-peers --threads-list 1 2 --json scan.json

``--scan-peers`` times the selective scan's CPU path against two peers measured in the same
run, interleaved (every repeat times each method at each thread count in turn), medians of
the repeats: the careful sequential loop (``unbind`` over time, autograd backward) and the
Blelloch-scan selective scan of mambapy (PyPI; ``pip install mambapy``).
All three compute the same thing: softplus(delta + bias), the scan, + D u, gated by silu(z).
It also counts the ATen ops of one forward+backward, and those with an output of at least
ATen's parallel grain size (32768 elements): on more than one thread each of those opens an
OpenMP parallel region, which on a busy machine waits for its slowest thread.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from advssm.ssm_layers.benchmark import SIZES, run_benchmarks, sequential_loop_selective_scan, to_markdown
from advssm.ssm_layers.ops import selective_scan
from torch.utils._python_dispatch import TorchDispatchMode

_GRAIN = 32768  # at::internal::GRAIN_SIZE: ATen runs smaller elementwise ops on one thread
SCAN_METHODS = ("torch", "loop", "mambapy")


def _mambapy_scan():
    try:
        from mambapy.mamba import MambaBlock
    except ImportError:
        raise SystemExit("--scan-peers needs mambapy: pip install mambapy") from None

    def scan(u, delta, A, B, C, D, z, delta_bias):
        """mambapy's own selective scan (its pscan), in its (batch, L, dim) layout."""
        y = MambaBlock.selective_scan(None, u, F.softplus(delta + delta_bias), A, B, C, D)
        return y * F.silu(z)

    return scan


def _scan_inputs(method, batch, dim, N, L, seed):
    """(function, inputs) of one method; mambapy gets its (batch, L, X) layout, made outside the timing."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, delta, B, C, z = rnd(batch, dim, L), rnd(batch, dim, L), rnd(batch, N, L), rnd(batch, N, L), rnd(batch, dim, L)
    A, D, bias = -torch.exp(rnd(dim, N)), rnd(dim), rnd(dim)
    if method == "mambapy":
        t = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731
        return _mambapy_scan(), [t(u), t(delta), A, t(B), t(C), D, t(z), bias]
    if method == "loop":
        return (lambda *a: sequential_loop_selective_scan(*a, delta_softplus=True)), [u, delta, A, B, C, D, z, bias]
    return (lambda *a: selective_scan(*a, delta_softplus=True, backend="torch")), [u, delta, A, B, C, D, z, bias]


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = self.large = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.large += any(isinstance(o, torch.Tensor) and o.numel() >= _GRAIN for o in outs)
        return out


def _fwd_bwd(fn, inputs):
    leaves = [x.detach().requires_grad_() for x in inputs]
    fn(*leaves).sum().backward()


def _fwd(fn, inputs):
    with torch.no_grad():
        fn(*inputs)


def _timed(call, fn, inputs):
    """(wall seconds, process CPU seconds) of ``call(fn, inputs)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    call(fn, inputs)
    return time.perf_counter() - wall, time.process_time() - cpu


def scan_peers(lengths, threads_list, repeats, batch=8, dim=128, N=16, seed=0):
    """Rows of the selective-scan comparison (see the module docstring)."""
    rows = []
    for L in lengths:
        size = dict(batch=batch, dim=dim, N=N, L=L)
        calls = {m: _scan_inputs(m, batch, dim, N, L, seed) for m in SCAN_METHODS}
        runs = {(m, th): {"fwd": [], "fwd_bwd": [], "fwd_bwd_cpu": []} for m in SCAN_METHODS for th in threads_list}
        load_before = os.getloadavg()[0]
        for rep in range(repeats + 1):  # the first round is a warm-up
            for th in threads_list:
                torch.set_num_threads(th)
                for m, (fn, inputs) in calls.items():
                    fwd, _ = _timed(_fwd, fn, inputs)
                    fwd_bwd, cpu = _timed(_fwd_bwd, fn, inputs)
                    if rep:
                        for key, value in (("fwd", fwd), ("fwd_bwd", fwd_bwd), ("fwd_bwd_cpu", cpu)):
                            runs[m, th][key].append(value)
            print(f"  L {L}: round {rep}/{repeats} done", flush=True)
        load_after = os.getloadavg()[0]
        for th in threads_list:
            med = {m: {k: statistics.median(v) for k, v in runs[m, th].items()} for m in SCAN_METHODS}
            for m, (fn, inputs) in calls.items():
                counter = _OpCounter()
                with counter:
                    _fwd_bwd(fn, inputs)
                rows.append(dict(
                    op="selective_scan", size=size, threads=th, method=m, repeats=repeats,
                    fwd_ms=1e3 * med[m]["fwd"], fwd_bwd_ms=1e3 * med[m]["fwd_bwd"],
                    cpu_over_wall=med[m]["fwd_bwd_cpu"] / med[m]["fwd_bwd"],
                    x_loop=med["loop"]["fwd_bwd"] / med[m]["fwd_bwd"],
                    x_mambapy=med["mambapy"]["fwd_bwd"] / med[m]["fwd_bwd"],
                    aten_ops=counter.ops, ops_over_grain=counter.large,
                    load_avg_1min=[load_before, load_after]))
    return rows


def _print_peak_rss(method, L):
    """(child process) One forward+backward on one thread; prints the peak RSS above the inputs', in MiB."""
    torch.set_num_threads(1)
    fn, inputs = _scan_inputs(method, 8, 128, 16, L, 0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _fwd_bwd(fn, inputs)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)  # Linux: KiB


def scan_peak_memory(lengths):
    """Peak memory of one forward+backward per method and length, each in a fresh process (a high-water mark)."""
    rows = []
    for L in lengths:
        for m in SCAN_METHODS:
            code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                    f"import bench_ops; bench_ops._print_peak_rss({m!r}, {L})")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            rows.append(dict(op="selective_scan", size=dict(batch=8, dim=128, N=16, L=L), method=m,
                             peak_rss_over_inputs_mib=float(out.split()[-1])))
    return rows


def scan_peers_markdown(rows):
    lines = ["| size | threads | method | fwd ms | fwd+bwd ms | x loop | x mambapy | CPU/wall | ATen ops "
             "(>= 32768 el.) | load (1 min) |", "|" + "---|" * 10]
    for r in rows:
        s = r["size"]
        bold = "**" if r["method"] == "torch" else ""
        lines.append(
            f"| batch {s['batch']}, dim {s['dim']}, N {s['N']}, L {s['L']} | {r['threads']} "
            f"| {bold}{r['method']}{bold} "
            f"| {r['fwd_ms']:.1f} | {bold}{r['fwd_bwd_ms']:.1f}{bold} | {r['x_loop']:.1f} | {r['x_mambapy']:.1f} "
            f"| {r['cpu_over_wall']:.2f} | {r['aten_ops']} ({r['ops_over_grain']}) "
            f"| {r['load_avg_1min'][0]:.1f} -> {r['load_avg_1min'][1]:.1f} |")
    return "\n".join(lines)


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
    parser.add_argument("--scan-peers", action="store_true",
                        help="selective scan's torch path against the careful loop and mambapy (see above)")
    parser.add_argument("--lengths", nargs="*", type=int, default=[1024, 4096], help="--scan-peers: sequence lengths")
    parser.add_argument("--threads-list", nargs="*", type=int, default=[1, 2], help="--scan-peers: thread counts")
    parser.add_argument("--scan-memory", action="store_true",
                        help="--scan-peers: also the peak RSS of one forward+backward per method (fresh processes)")
    args = parser.parse_args(argv)
    if args.scan_peers:
        rows = scan_peers(args.lengths, args.threads_list, args.repeats, seed=args.seed)
        print(scan_peers_markdown(rows))
        memory = scan_peak_memory(args.lengths) if args.scan_memory else []
        for r in memory:
            print(f"peak RSS of one forward+backward, L {r['size']['L']}, {r['method']}: "
                  f"{r['peak_rss_over_inputs_mib']:.0f} MiB over the inputs'")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"torch": torch.__version__, "cpu_count": os.cpu_count(), "rows": rows,
                           "memory": memory}, f, indent=1)
        return
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
