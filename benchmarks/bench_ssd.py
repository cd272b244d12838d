"""Benchmark the SSD op's CPU path against the sequential reference and against ``transformers``' Mamba-2.

    python benchmarks/bench_ssd.py --json ssd.json                 # L 1024 and 4096, 1 thread
    python benchmarks/bench_ssd.py --lengths 1024 --chunks 256 64 --repeats 3

What is timed, per sequence length, each from the same parameters and inputs (float32, CPU):

- ``ours``: ``advssm.ssm_layers.ops.ssd(..., backend="torch")``, the chunked PyTorch path.
- ``reference``: ``ssd_reference``, the per-step recurrence (autograd differentiates it).
- ``transformers``: the SSD step of ``transformers``' ``Mamba2Mixer.forward`` (its "3. SSM
  transformation"): ``mamba2_scan_forward(mixer, x, B, C, dt, cache=None)``, which on the CPU
  (no ``mamba_ssm``) runs its PyTorch chunked scan ``mamba2_chunk_scan`` with the mixer's
  ``A = -exp(A_log)``, ``D``, ``dt_bias``, softplus and ``time_step_limit``. The mixer's
  projections, convolution and gated norm are not timed, for either side.

``ours`` gets exactly the arguments ``mamba2_scan_forward`` passes (A, D, dt_bias, softplus,
dt_limit from the same mixer) and its output is checked against theirs and the reference before
timing. Forward runs under ``torch.no_grad``; forward+backward differentiates a fixed random
linear functional of the output with respect to x, dt, B, C, A_log, D and dt_bias. Every repeat
times each method in turn (interleaved, after one warm-up round); the table gives medians and
the ratios of the medians. The machine load (``os.getloadavg``) before and after is recorded.

Each call is timed twice over: wall time (``time.perf_counter``) and this process's CPU time
(``time.process_time``, user + system, all its threads). On an idle machine with one thread they
agree; on a shared, loaded one the wall time also counts the time the process waited for a core,
which swings from call to call (a short call can wait several times its own length), so the CPU
time is the steadier measure of the code and both are reported, each with its own ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import warnings

import torch
from advssm.ssm_layers.ops import ssd, ssd_reference

METHODS = ("ours", "reference", "transformers")


def _mixer(nheads, ngroups, headdim, dstate, chunk, seed):
    """A transformers Mamba2Mixer of these sizes (d_model = nheads * headdim / 2, expand 2)."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    torch.manual_seed(seed)
    config = Mamba2Config(hidden_size=nheads * headdim // 2, expand=2, num_heads=nheads, head_dim=headdim,
                          n_groups=ngroups, state_size=dstate, chunk_size=chunk, num_hidden_layers=1)
    mixer = Mamba2Mixer(config, layer_idx=0).float()
    with torch.no_grad():  # dt_bias, A_log and D as a trained model's: not all equal
        mixer.dt_bias.normal_(-2.0, 0.5)
        mixer.D.normal_()
    return mixer


def _calls(mixer, batch, L, seed):
    """{method: (function of the inputs, inputs)}: the same x, dt, B, C and parameters for every method."""
    from transformers.models.mamba2.modeling_mamba2 import mamba2_scan_forward

    g = torch.Generator().manual_seed(seed)
    h, p, n, ng = mixer.num_heads, mixer.head_dim, mixer.ssm_state_size, mixer.n_groups
    x, dt = torch.randn(batch, L, h * p, generator=g), torch.randn(batch, L, h, generator=g)
    B, C = torch.randn(batch, L, ng * n, generator=g), torch.randn(batch, L, ng * n, generator=g)
    params = [mixer.A_log, mixer.D, mixer.dt_bias]
    limit = tuple(mixer.time_step_limit)

    def ours_or_reference(fn):
        def run(x, dt, B, C, A_log, D, dt_bias):
            y = fn(x.view(batch, L, h, p), dt, -torch.exp(A_log.float()), B.view(batch, L, ng, n),
                   C.view(batch, L, ng, n), mixer.chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=limit)
            return y.reshape(batch, L, h * p)
        return run

    # what mamba2_scan_forward reads of the mixer, with this call's A_log, D and dt_bias (the leaves of the backward)
    geometry = {k: getattr(mixer, k) for k in ("time_step_limit", "chunk_size", "layer_idx", "num_heads", "head_dim",
                                               "n_groups", "ssm_state_size", "intermediate_size")}

    def theirs(x, dt, B, C, A_log, D, dt_bias):
        module = types.SimpleNamespace(**geometry, A_log=A_log, D=D, dt_bias=dt_bias)
        return mamba2_scan_forward(module, x, B, C, dt, None)

    inputs = [x, dt, B, C, *(q.detach().clone() for q in params)]
    return {"ours": (ours_or_reference(lambda *a, **k: ssd(*a, **k, backend="torch")), inputs),
            "reference": (ours_or_reference(ssd_reference), inputs),
            "transformers": (theirs, inputs)}


def _fwd(fn, inputs, _):
    with torch.no_grad():
        fn(*inputs)


def _fwd_bwd(fn, inputs, weight):
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = fn(*leaves)
    torch.autograd.grad(y, leaves, weight)


def _seconds(call, fn, inputs, weight):
    """(wall seconds, CPU seconds of this process) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    call(fn, inputs, weight)
    return time.perf_counter() - start, time.process_time() - start_cpu


def agreement(calls):
    """Max |difference| of each method's output from the float64 reference's, and the output's max |y|."""
    fn, inputs = calls["reference"]
    with torch.no_grad():
        ref = fn(*(t.double() for t in inputs))
        return {m: float((f(*inputs).double() - ref).abs().max()) for m, (f, _) in calls.items()}, \
            float(ref.abs().max())


def bench(lengths, chunks, batch, nheads, ngroups, headdim, dstate, repeats, seed=0, log=print):
    rows = []
    for chunk in chunks:
        mixer = _mixer(nheads, ngroups, headdim, dstate, chunk, seed)
        for L in lengths:
            calls = _calls(mixer, batch, L, seed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                diffs, scale = agreement(calls)
            weight = torch.randn(batch, L, nheads * headdim, generator=torch.Generator().manual_seed(seed + 1))
            times = {(m, k): [] for m in METHODS for k in ("fwd", "fwd_bwd", "fwd_cpu", "fwd_bwd_cpu")}
            load_before = os.getloadavg()
            for rep in range(repeats + 1):  # round 0 is a warm-up
                for m, (fn, inputs) in calls.items():
                    (fwd, fwd_cpu), (fwd_bwd, fwd_bwd_cpu) = (_seconds(c, fn, inputs, weight) for c in (_fwd, _fwd_bwd))
                    if rep:
                        for key, value in (("fwd", fwd), ("fwd_bwd", fwd_bwd), ("fwd_cpu", fwd_cpu),
                                           ("fwd_bwd_cpu", fwd_bwd_cpu)):
                            times[m, key].append(value)
                log(f"[bench_ssd] chunk {chunk} L {L}: round {rep}/{repeats}")
            load_after = os.getloadavg()
            med = {key: 1e3 * statistics.median(v) for key, v in times.items()}
            for m in METHODS:
                rows.append(dict(
                    method=m, L=L, chunk=chunk, batch=batch, nheads=nheads, ngroups=ngroups, headdim=headdim,
                    dstate=dstate, repeats=repeats, fwd_ms=med[m, "fwd"], fwd_bwd_ms=med[m, "fwd_bwd"],
                    fwd_all_ms=[1e3 * t for t in times[m, "fwd"]],
                    fwd_bwd_all_ms=[1e3 * t for t in times[m, "fwd_bwd"]],
                    x_transformers_fwd=med["transformers", "fwd"] / med[m, "fwd"],
                    x_transformers_fwd_bwd=med["transformers", "fwd_bwd"] / med[m, "fwd_bwd"],
                    x_reference_fwd=med["reference", "fwd"] / med[m, "fwd"],
                    x_reference_fwd_bwd=med["reference", "fwd_bwd"] / med[m, "fwd_bwd"],
                    fwd_cpu_ms=med[m, "fwd_cpu"], fwd_bwd_cpu_ms=med[m, "fwd_bwd_cpu"],
                    x_transformers_fwd_cpu=med["transformers", "fwd_cpu"] / med[m, "fwd_cpu"],
                    x_transformers_fwd_bwd_cpu=med["transformers", "fwd_bwd_cpu"] / med[m, "fwd_bwd_cpu"],
                    max_abs_diff_vs_float64_reference=diffs[m], max_abs_output=scale,
                    load_avg_1_5_15_before=list(load_before), load_avg_1_5_15_after=list(load_after),
                    warnings=sorted({str(w.message)[:200] for w in caught})))
    return rows


def markdown(rows):
    lines = ["| L | chunk | method | fwd ms | fwd+bwd ms | x transformers fwd | x transformers fwd+bwd "
             "| CPU fwd ms | CPU fwd+bwd ms | x transformers fwd (CPU) | x transformers fwd+bwd (CPU) "
             "| x reference fwd | x reference fwd+bwd | max abs diff vs fp64 | load 1 min before -> after |",
             "|" + "---|" * 15]
    for r in rows:
        bold = "**" if r["method"] == "ours" else ""
        lines.append(f"| {r['L']} | {r['chunk']} | {bold}{r['method']}{bold} | {r['fwd_ms']:.1f} "
                     f"| {r['fwd_bwd_ms']:.1f} "
                     f"| {bold}{r['x_transformers_fwd']:.2f}{bold} | {bold}{r['x_transformers_fwd_bwd']:.2f}{bold} "
                     f"| {r['fwd_cpu_ms']:.1f} | {r['fwd_bwd_cpu_ms']:.1f} "
                     f"| {bold}{r['x_transformers_fwd_cpu']:.2f}{bold} "
                     f"| {bold}{r['x_transformers_fwd_bwd_cpu']:.2f}{bold} "
                     f"| {r['x_reference_fwd']:.1f} | {r['x_reference_fwd_bwd']:.1f} "
                     f"| {r['max_abs_diff_vs_float64_reference']:.1e} (of {r['max_abs_output']:.2g}) "
                     f"| {r['load_avg_1_5_15_before'][0]:.1f} -> {r['load_avg_1_5_15_after'][0]:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="*", type=int, default=[1024, 4096])
    parser.add_argument("--chunks", nargs="*", type=int, default=[256], help="chunk sizes (both paths; default 256)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--nheads", type=int, default=8)
    parser.add_argument("--ngroups", type=int, default=1)
    parser.add_argument("--headdim", type=int, default=64)
    parser.add_argument("--dstate", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        import transformers
    except ImportError:
        raise SystemExit("bench_ssd needs transformers: pip install transformers") from None
    torch.set_num_threads(args.threads)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    start = time.perf_counter()
    rows = bench(args.lengths, args.chunks, args.batch, args.nheads, args.ngroups, args.headdim, args.dstate,
                 args.repeats, args.seed, log=lambda m: print(m, flush=True))
    header = {"command": "python benchmarks/bench_ssd.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
              "python": platform.python_version(), "cpu_count": os.cpu_count(), "uptime_before": uptime,
              "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "seconds": round(time.perf_counter() - start, 1)}
    print(markdown(rows))
    print(f"\n{header['threads']} thread(s), torch {header['torch']}, transformers {header['transformers']}; "
          f"uptime before: {header['uptime_before']}; after: {header['uptime_after']}")
    if args.json:
        from advssm.ssm_layers.checkpoint import atomic_write

        atomic_write(args.json, (json.dumps({**header, "rows": rows}, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
