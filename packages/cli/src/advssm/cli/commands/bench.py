"""``advssm bench``: the kernel benchmarks of advssm-ssm-layers (``advssm.ssm_layers.benchmark``)."""
from __future__ import annotations

import difflib

import click
import torch
from advssm.ssm_layers import backends as backend_status
from advssm.ssm_layers.benchmark import SIZES, run_benchmarks, to_markdown

from ..errors import ConfigError
from ..output import emit

# "loop" is the benchmark's sequential-loop baseline of the selective scan, not a dispatch backend
EXTRA_BACKENDS = ("loop",)
DEFAULT_REPEATS, DEFAULT_REF_BUDGET_S = 5, 60.0
# --quick: under 2 minutes on 2 CPU cores. The sequential references of the two scans at L 1024
# (tens of seconds per forward+backward) are then skipped, and their rows say so.
QUICK_REPEATS, QUICK_REF_BUDGET_S = 3, 5.0


def _split(text: str | None) -> list[str] | None:
    """``"a, b"`` -> ["a", "b"]; None stays None (= all)."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_names(given: list[str] | None, known, what: str) -> None:
    for name in given or []:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {what} {name!r}{hint} (choose from {', '.join(known)})")


def _device(name: str | None):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid --device {name!r}: use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"invalid --device {name!r}: use cpu, cuda or cuda:N")
    return device


def select_sizes(sizes: str | None, quick: bool, ops: list[str] | None, device) -> dict[str, list[dict]]:
    """The {op: [size dicts]} to time: a named size set (default gpu on CUDA, cpu otherwise), ``ops`` of it,
    and with ``quick`` only the first size of each op (as ``benchmarks/bench_ops.py --quick``)."""
    name = sizes or ("gpu" if device.type == "cuda" else "cpu")
    _check_names([name], SIZES, "size set")
    table = SIZES[name]
    _check_names(ops, table, "op")
    chosen = {op: table[op] for op in (ops or table)}
    return {op: entries[:1] for op, entries in chosen.items()} if quick else chosen


@click.command()
@click.option("--quick", is_flag=True, help="Only the first size of each op, 3 repeats, a 5 s reference budget "
              "(under 2 minutes on 2 CPU cores).")
@click.option("--sizes", metavar="NAME", help="Size set: cpu, gpu or tiny (default: gpu on CUDA, cpu otherwise).")
@click.option("--ops", metavar="A,B", help="Comma-separated ops (default: all): selective_scan, diag_scan, "
              "vandermonde_kernel, fft_conv.")
@click.option("--backends", metavar="A,B", help="Comma-separated backends to time besides the reference "
              "(default: every available one): torch, triton, loop.")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Timed calls per measurement (the median is reported), after one warm-up call "
              "[default: 5; 3 with --quick].")
@click.option("--device", help="cpu, cuda or cuda:N (default: cuda if available).")
@click.option("--ref-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Skip a reference estimated above this many seconds per forward+backward "
              "[default: 60; 5 with --quick].")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (default: torch's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the inputs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(quick, sizes, ops, backends, repeats, device, ref_budget, threads, seed, as_json):
    """Time the selective scan, diagonal scan, Vandermonde kernel and FFT convolution on every backend.

    One row per op, size and backend: median forward and forward+backward milliseconds and the
    speed-up over the sequential reference measured in the same run. A reference estimated to take
    longer than --ref-budget is skipped and the row says why.

    \b
    Examples:
      advssm bench --quick                          # the first CPU size of each op, < 2 min
      advssm bench --sizes tiny --repeats 1         # a smoke test, a few seconds
      advssm bench --ops selective_scan --backends torch,loop --threads 2
      advssm bench --device cuda --json > bench.json
    """
    chosen_device = _device(device)
    repeats = repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS)
    ref_budget = ref_budget or (QUICK_REF_BUDGET_S if quick else DEFAULT_REF_BUDGET_S)
    table = select_sizes(sizes, quick, _split(ops), chosen_device)
    status = backend_status(chosen_device)
    wanted = _split(backends)
    known = list(dict.fromkeys(name for op in status.values() for name in op)) + list(EXTRA_BACKENDS)
    _check_names(wanted, known, "backend")
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rows = _run(table, repeats, wanted, chosen_device, ref_budget, seed, status)
        header = {"torch": torch.__version__, "device": str(chosen_device), "threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(threads_before)  # for this benchmark only, not for a caller in the same process
    emit({**header, "rows": rows}, as_json,
         f"device {header['device']}, torch {header['torch']}, {header['threads']} CPU threads; "
         f"x ref = reference time / this time\n\n{to_markdown(rows)}")


def _run(table: dict, repeats: int, wanted: list[str] | None, device, ref_budget: float, seed: int,
         status: dict) -> list[dict]:
    """``run_benchmarks`` one size at a time, so a long CPU benchmark shows where it is."""
    for op in table:
        for name in wanted or []:
            entry = status[op].get(name)
            if entry is not None and not entry["available"]:
                click.echo(f"note: {op} has no {name} backend here ({entry['reason']})", err=True)
    rows = []
    jobs = [(op, size) for op, entries in table.items() for size in entries]
    for i, (op, size) in enumerate(jobs, 1):
        shape = " ".join(f"{k}={v}" for k, v in size.items())
        click.echo(f"[{i}/{len(jobs)}] {op} {shape}", err=True)
        rows += run_benchmarks([op], {op: [size]}, repeats, wanted, device=device, ref_budget_s=ref_budget, seed=seed)
    return rows
