"""One-command GPU verification: the Triton kernels compiled on this GPU, their speed, and the cost of
training the paper's models, in one JSON file and the GPU rows of docs/performance.md.

    python benchmarks/gpu_verify.py                       # on a CUDA machine, from the repository root
    nox -s gpu                                            # the same in a venv that sees the system torch + triton
    TRITON_INTERPRET=1 python benchmarks/gpu_verify.py --sizes tiny --device cpu --out v.json   # the CPU dry run

The CPU dry run also needs numpy (Triton's interpreter imports it; compiled Triton does not).

It needs only torch and triton: it imports advssm-ssm-layers and advssm-adv-train from the
installed packages (``pip install --no-deps ./packages/ssm-layers ./packages/adv-train``) or,
when they are not installed (no network, no build backend), straight from this source tree.
Sections, each written to the JSON file as soon as it is done, each row's failure recorded
rather than raised:

1. ``verification``: every kernel against its float64 reference, forward and the gradients of
   every input, at the kernel tests' sizes and at the paper's sizes (``kernel_verification``),
   plus the first-use check of each kernel as ``backend="auto"`` runs it.
2. ``ops``: forward and forward+backward of each kernel and of the PyTorch path at the ``gpu``
   sizes, and one device-to-device copy of the same bytes (inputs + output): ``copy / fwd`` is
   the fraction of copy bandwidth the forward reaches.
3. ``training``: one AdamW training step of each paper preset (S4, DSS, S5, Mega, S6 on
   MNIST, CIFAR-10, Tiny-ImageNet, batch 256; halved on out-of-memory, and said so) and one
   PGD-10 batch (adv-train's PGD, the paper's eps and step), with the projected cost of an
   epoch of standard training and of PGD-AT; the same training step under bf16 autocast
   (``TrainConfig.precision = "bf16"``, as the trainer runs it) timed beside the fp32 one.

Past ``--budget-s`` (default 400 s, inside the 8 minutes this is meant to take) the remaining
rows are listed as skipped. Each section runs in its own process, killed 45 s past its share
of the budget, so a kernel that faults or hangs costs that section only. Exit status: 0 when
every verification case passed, 1 when one failed or a section did not finish, 2 when the
kernels could not run at all on a CUDA device.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- gpu_verify: begin -->", "<!-- gpu_verify: end -->"
# Paper protocol: AdamW lr 1e-3, weight decay 2e-4, batch 256; PGD-10 eps / step per data set.
DATASETS = {  # name: (image shape, training examples, eps, alpha)
    "mnist": ((1, 28, 28), 60_000, 0.3, 0.04),
    "cifar10": ((3, 32, 32), 50_000, 8 / 255, 2 / 255),
    "tinyimagenet": ((3, 64, 64), 100_000, 8 / 255, 2 / 255),
}
PAPER_LAYERS = ("s4", "dss", "s5", "mega", "s6")
BATCH = 256
# The dry run (--sizes tiny): each layer once, the data sets in turn, so every code path runs in seconds.
TINY_PRESETS = [("mnist", "s4"), ("cifar10", "dss"), ("tinyimagenet", "s5"), ("mnist", "mega"), ("cifar10", "s6")]
TINY_OP_SIZES = {
    "selective_scan": [dict(batch=1, dim=4, N=4, L=9)],
    "diag_scan": [dict(batch=1, H=4, N=2, L=9, complex=True)],
    "vandermonde_kernel": [dict(H=4, N=4, L=9)],
    "fft_conv": [dict(batch=1, H=4, L=9)],
    "ssd": [dict(batch=1, L=9, nheads=2, ngroups=1, headdim=4, dstate=4, chunk=4)],
}


@functools.cache  # the first call's answer: once it has put the source tree on sys.path, the packages always import
def _import_advssm() -> str:
    """Import the two packages, from the source tree when they are not installed; say which."""
    try:
        import advssm.adv_train  # noqa: F401
        import advssm.ssm_layers  # noqa: F401
        return "installed"
    except ImportError:
        for package in ("ssm-layers", "adv-train"):
            sys.path.insert(0, str(ROOT / "packages" / package / "src"))
        for name in [m for m in sys.modules if m == "advssm" or m.startswith("advssm.")]:
            del sys.modules[name]  # a half-found namespace package would hide the source tree
        import advssm.adv_train  # noqa: F401
        import advssm.ssm_layers  # noqa: F401
        return f"source tree {ROOT / 'packages'}"


class Report:
    """The JSON document, rewritten after every section so that a killed run keeps what it did."""

    def __init__(self, path: Path | None, header: dict):
        self.path, self.data = path, {**header, "sections": {}}

    def section(self, name: str, rows: list[dict]):
        self.data["sections"][name] = rows
        self.write()

    def write(self):
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
            os.replace(tmp, self.path)


def _log(message: str):
    print(f"[gpu_verify {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _error(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {str(exc).strip()[:400]}"


def environment(device, sizes: str, source: str) -> dict:
    import torch
    from advssm.ssm_layers.ops import triton_status
    from advssm.ssm_layers.ops._backend import device_name, triton_version

    ok, why = triton_status(device)
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device_name(device), "sizes": sizes, "python": platform.python_version(),
           "torch": torch.__version__, "triton": triton_version(), "triton_usable": ok, "triton_reason": why,
           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""), "advssm_from": source,
           "command": os.environ.get("GPU_VERIFY_COMMAND", " ".join([Path(sys.executable).name, *sys.argv]))}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1))
    return env


# --------------------------------------------------------------------------- 1. verification

def verification(device, sizes: str, deadline: float) -> list[dict]:
    """Every kernel case against the float64 reference, then each kernel's first-use check via auto."""
    from advssm.ssm_layers.kernel_verification import CASES, case_name, verify
    from advssm.ssm_layers.ops import triton_status

    usable, why = triton_status(device)
    sets = ("tests", "paper") if sizes == "full" else ("tiny",)
    if not usable:
        return [{"op": op, "case": case_name(op, case), "ok": None, "skipped": why}
                for which in sets for op, cases in CASES[which].items() for case in cases]
    rows = []
    for which in sets:
        _log(f"verifying the kernels at the {which!r} sizes")
        new = verify(which, device, deadline=deadline)
        for row in new:
            if row.get("ok") is False:
                _log(f"  MISMATCH {row['op']} {row['case']}: {row['mismatch']}")
        rows += new
    rows += first_use_checks(device)
    return rows


def first_use_checks(device) -> list[dict]:
    """Run each kernel op once through backend="auto" (on CUDA: the kernel after its first-use check;
    on the CPU, where auto keeps the PyTorch path, through backend="triton", which checks as well)
    and record the check's verdicts and any warning: on fp32 inputs, and for the real-valued ops on
    bf16 and fp16 inputs too (a kernel that fails its check there makes auto run the PyTorch path)."""
    import warnings

    import torch
    from advssm.ssm_layers import benchmark, ops

    gen = torch.Generator().manual_seed(0)
    rows = []
    sizes = {name: TINY_OP_SIZES[name][:1] for name, op in ops.OPS.items() if op.kernel is not None}
    sizes["diag_scan"] = [*sizes["diag_scan"], {**sizes["diag_scan"][0], "complex": False}]  # S5's and Mega's
    for name, size in ((name, size) for name, entries in sizes.items() for size in entries):
        args, kwargs = benchmark.op_inputs(name, size, device, gen)
        real = not any(isinstance(a, torch.Tensor) and a.is_complex() for a in args)
        for dtype in (torch.float32, torch.bfloat16, torch.float16) if real else (None,):
            given = [a.to(dtype) if dtype is not None and isinstance(a, torch.Tensor) and a.is_floating_point()
                     else a for a in args]
            backend = "auto" if device.type == "cuda" else "triton"
            ops.reset_kernel_checks()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    getattr(ops, name)(*given, **kwargs, backend=backend)
                    error = None
                except Exception as exc:
                    error = _error(exc)
            verdicts = [v for k, v in ops.kernel_checks().items() if k[0] == name]
            inputs = "complex64" if dtype is None else str(dtype).removeprefix("torch.")
            rows.append({"op": name, "case": f"first-use check (backend={backend!r}, {inputs} inputs)",
                         "ok": None if not verdicts else all(v is None for v in verdicts),
                         "mismatch": error or next((v for v in verdicts if v), None),
                         "note": "auto did not pick the kernel on this device" if not verdicts else None,
                         "warnings": [str(w.message) for w in caught
                                      if issubclass(w.category, ops.KernelCheckWarning)]})
    ops.reset_kernel_checks()
    return rows


# --------------------------------------------------------------------------- 2. op timings

def op_timings(device, sizes: str, repeats: int, deadline: float) -> list[dict]:
    """Forward and forward+backward of the kernel and the PyTorch path, and a copy of the same bytes."""
    import torch
    from advssm.ssm_layers import benchmark

    table = benchmark.SIZES["gpu"] if sizes == "full" else TINY_OP_SIZES
    gen = torch.Generator().manual_seed(0)
    rows = []
    for op, entries in table.items():
        for size in entries:
            base = {"op": op, "size": dict(size)}
            if time.perf_counter() > deadline:
                rows.append({**base, "skipped": "time budget spent"})
                continue
            _log(f"timing {op} {size}")
            try:
                args, kwargs = benchmark.op_inputs(op, size, device, gen)
                row = dict(base)
                for backend in (["triton"] if op != "fft_conv" else []) + ["torch"]:
                    try:
                        fwd, fwd_bwd = benchmark.runners(op, backend, args, kwargs)
                        row[f"{backend}_fwd_ms"] = 1e3 * benchmark.median_seconds(fwd, device, repeats)
                        row[f"{backend}_fwd_bwd_ms"] = 1e3 * benchmark.median_seconds(fwd_bwd, device, repeats)
                    except Exception as exc:
                        row[f"{backend}_error"] = _error(exc)
                nbytes = benchmark.tensor_bytes(args, benchmark.runners(op, "torch", args, kwargs)[0]())
                row["bytes"] = nbytes
                row["copy_ms"] = 1e3 * benchmark.copy_seconds(nbytes, device, repeats)
                for backend in ("triton", "torch"):
                    if f"{backend}_fwd_ms" in row:
                        row[f"{backend}_copy_fraction"] = row["copy_ms"] / row[f"{backend}_fwd_ms"]
                if "triton_fwd_ms" in row and "torch_fwd_ms" in row:
                    row["speedup_fwd"] = row["torch_fwd_ms"] / row["triton_fwd_ms"]
                    row["speedup_fwd_bwd"] = row["torch_fwd_bwd_ms"] / row["triton_fwd_bwd_ms"]
                rows.append(row)
            except Exception as exc:
                rows.append({**base, "error": _error(exc)})
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- 3. training cost

def _median_step(fn, device, repeats: int, warmup: bool = True) -> float:
    import torch

    if warmup:
        fn()  # kernel compilation, first-use checks, allocator
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _one_preset(dataset: str, layer: str, batch: int, device, repeats: int, tiny: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from advssm.adv_train.attacks import PGD
    from advssm.adv_train.precision import autocast_forward
    from advssm.ssm_layers import build_model, preset

    shape, n_train, eps, alpha = DATASETS[dataset]
    overrides = dict(layer=layer)
    if tiny:  # the same code at sizes the CPU runs in a second
        overrides.update(d_model=16, d_state=4, n_layers=1)
        shape = (shape[0], 6, 6)
    torch.manual_seed(0)
    model = build_model(preset(dataset, **overrides)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=2e-4)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=gen).to(device)
    y = torch.randint(0, model.config.n_classes, (batch,), generator=gen).to(device)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def train_step_bf16():  # the trainer's precision = "bf16": the forward under autocast, fp32 logits
        with autocast_forward(model, "bf16", device):
            train_step()

    attack = PGD(model, eps=eps, alpha=alpha, steps=10, random_start=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = _median_step(train_step, device, repeats)
    bf16_s = _median_step(train_step_bf16, device, repeats)
    pgd_s = _median_step(lambda: attack(x, y), device, 1, warmup=False)  # the training steps warmed the model up
    steps_per_epoch = -(-n_train // batch)
    row = {"step_ms": 1e3 * step_s, "step_bf16_ms": 1e3 * bf16_s, "bf16_speedup": step_s / bf16_s,
           "pgd10_ms": 1e3 * pgd_s, "steps_per_epoch": steps_per_epoch,
           "epoch_st_min": steps_per_epoch * step_s / 60, "epoch_pgd_at_min": steps_per_epoch * (step_s + pgd_s) / 60,
           "parameters": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def training_costs(device, sizes: str, repeats: int, deadline: float) -> list[dict]:
    """One training step and one PGD-10 batch of each paper preset, batch 256 (halved on OOM)."""
    import torch

    tiny = sizes != "full"
    rows = []
    for dataset, layer in TINY_PRESETS if tiny else [(d, layer) for d in DATASETS for layer in PAPER_LAYERS]:
        base = {"dataset": dataset, "layer": layer}
        if time.perf_counter() > deadline:
            rows.append({**base, "skipped": "time budget spent"})
            continue
        batch, note = (4 if tiny else BATCH), None
        _log(f"training step {dataset} {layer}")
        while True:
            out_of_memory = False
            try:
                rows.append({**base, "batch": batch, **_one_preset(dataset, layer, batch, device, repeats, tiny),
                             **({"note": note} if note else {})})
                break
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True
            except Exception as exc:
                rows.append({**base, "batch": batch, "error": _error(exc)})
                break
            # outside the except block: its traceback no longer holds the failed attempt's tensors
            gc.collect()
            torch.cuda.empty_cache()
            if out_of_memory and batch <= 16:
                rows.append({**base, "error": f"out of memory down to batch {batch}"})
                break
            note = f"batch {BATCH} ran out of memory; timed at batch {batch // 2}, projected per epoch"
            batch //= 2
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- the docs rows

def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def markdown(data: dict) -> str:
    """The GPU rows of docs/performance.md from the JSON document."""
    env, sections = data, data["sections"]
    lines = [f"Measured {env.get('date', '?')} on **{env.get('device', '?')}** (torch {env.get('torch', '?')}, "
             f"triton {env.get('triton', '?')}, CUDA {env.get('cuda', '-')}), sizes `{env.get('sizes', '?')}`, "
             f"by `{env.get('command', '?')}`.", ""]
    if "error" in env:
        lines += [f"**The environment could not be read**: {env['error']}", ""]
    for name, rows in sections.items():  # a section whose process failed has one row: its error
        failed = [r for r in rows if "error" in r and "op" not in r and "dataset" not in r]
        lines += [f"**The {name} section failed**: {r['error']}" for r in failed] + ([""] if failed else [])
        sections = {**sections, name: [r for r in rows if r not in failed]}
    ver = sections.get("verification", [])
    if ver:
        lines += ["| kernel | cases | passed | failed | skipped | failures |", "|---|---|---|---|---|---|"]
        for op in dict.fromkeys(r["op"] for r in ver):
            mine = [r for r in ver if r["op"] == op]
            failed = [r for r in mine if r.get("ok") is False]
            lines.append(f"| {op} | {len(mine)} | {sum(r.get('ok') is True for r in mine)} | {len(failed)} | "
                         f"{sum(r.get('ok') is None for r in mine)} | "
                         + ("; ".join(f"{r['case']}: {r['mismatch']}" for r in failed)[:600] or "-") + " |")
        lines.append("")
    timing = sections.get("ops", [])
    if timing:
        lines += ["| op | size | triton fwd ms | torch fwd ms | triton fwd+bwd ms | torch fwd+bwd ms | "
                  "x torch fwd | x torch fwd+bwd | copy ms | copy / triton fwd | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in timing:
            size = " ".join(f"{k}={v}" for k, v in r["size"].items())
            note = r.get("skipped") or r.get("error") or r.get("triton_error") or ""
            lines.append(f"| {r['op']} | {size} | {_fmt(r.get('triton_fwd_ms'))} | {_fmt(r.get('torch_fwd_ms'))} | "
                         f"{_fmt(r.get('triton_fwd_bwd_ms'))} | {_fmt(r.get('torch_fwd_bwd_ms'))} | "
                         f"{_fmt(r.get('speedup_fwd'), '.3g')} | {_fmt(r.get('speedup_fwd_bwd'), '.3g')} | "
                         f"{_fmt(r.get('copy_ms'), '.3f')} | {_fmt(r.get('triton_copy_fraction'))} | {note} |")
        lines.append("")
    train = sections.get("training", [])
    if train:
        lines += ["| data set | layer | batch | train step ms | bf16 step ms | bf16 speed-up | PGD-10 batch ms | "
                  "epoch ST min | epoch PGD-AT min | peak GiB | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in train:
            note = r.get("skipped") or r.get("error") or r.get("note") or ""
            lines.append(f"| {r['dataset']} | {r['layer']} | {r.get('batch', '-')} | {_fmt(r.get('step_ms'), '.1f')} | "
                         f"{_fmt(r.get('step_bf16_ms'), '.1f')} | {_fmt(r.get('bf16_speedup'), '.2f')} | "
                         f"{_fmt(r.get('pgd10_ms'), '.1f')} | {_fmt(r.get('epoch_st_min'), '.1f')} | "
                         f"{_fmt(r.get('epoch_pgd_at_min'), '.1f')} | {_fmt(r.get('peak_memory_gib'))} | {note} |")
    return "\n".join(lines).rstrip() + "\n"


def write_doc_rows(path: Path, text: str):
    """Replace what lies between the gpu_verify markers of ``path`` with ``text``."""
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers to put the GPU rows between")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}{END}", doc, count=1))


# --------------------------------------------------------------------------- main

SECTIONS = ("verification", "ops", "training")
# Each section runs in its own process, so that a kernel that faults (an illegal address poisons the
# CUDA context) or hangs costs that section only. Its deadline is this cumulative share of the budget;
# a process still running GRACE_S after it is killed.
SHARE = {"environment": 0.0, "verification": 0.4, "ops": 0.65, "training": 1.0}
GRACE_S = 45.0


def _section_rows(name: str, device, args, deadline: float) -> list[dict]:
    if name == "environment":
        return [environment(device, args.sizes, _import_advssm())]
    if name == "verification":
        return verification(device, args.sizes, deadline)
    if name == "ops":
        return op_timings(device, args.sizes, args.repeats, deadline)
    return training_costs(device, args.sizes, max(1, args.repeats // 2), deadline)


def _child(args) -> int:
    """``--section-only NAME``: run one section in this process and write its rows to ``--out``."""
    _import_advssm()
    import torch

    device = torch.device(args.device)
    deadline = time.perf_counter() + (args.deadline_epoch - time.time())
    fault = os.environ.get("GPU_VERIFY_TEST_FAULT", "")  # for the tests: "SECTION:crash" or "SECTION:hang"
    if fault == f"{args.section_only}:crash":
        os._exit(3)  # as a CUDA fault would end the process
    if fault == f"{args.section_only}:hang":
        time.sleep(3600)
    try:
        rows = _section_rows(args.section_only, device, args, deadline)
    except Exception as exc:  # the whole section failed: say so, the other sections still run
        traceback.print_exc()
        rows = [{"error": _error(exc)}]
    Path(args.out).write_text(json.dumps({"rows": rows}, default=str))
    return 0


def _run_section(name: str, args, device: str, deadline_epoch: float, hard_stop: float, part: Path) -> list[dict]:
    """Run one section in a child process (its stderr passed through), killed at ``hard_stop``."""
    import subprocess
    import threading
    from collections import deque

    part.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section-only", name, "--device", device,
           "--sizes", args.sizes, "--repeats", str(args.repeats), "--deadline-epoch", repr(deadline_epoch),
           "--out", str(part)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1)
    tail = deque(maxlen=30)

    def forward():
        for line in proc.stderr:
            tail.append(line.rstrip())
            sys.stderr.write(line)

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(1.0, hard_stop - time.time()))
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its PID
        proc.wait()
        reader.join(5)
        return [{"error": f"the {name} section was still running {args.grace_s:g} s past its deadline and was "
                          f"killed; last output: {' | '.join(list(tail)[-5:])}"}]
    reader.join(5)
    if code != 0 or not part.exists():
        return [{"error": f"the {name} section's process exited with status {code}; last output: "
                          f"{' | '.join(list(tail)[-5:])}"}]
    return json.loads(part.read_text())["rows"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", choices=("full", "tiny"), default="full",
                        help="full: kernel-test and paper sizes, gpu op sizes, the paper presets at batch 256; "
                        "tiny: small cases for a dry run under TRITON_INTERPRET=1 on the CPU")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--out", default="gpu_verify.json", help="the JSON file (default: %(default)s)")
    parser.add_argument("--doc", default=None, help="the page whose GPU rows to rewrite "
                        "(default: docs/performance.md on CUDA, none on the CPU)")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="skip what is left after this many seconds (default: %(default)s; a section still "
                        f"running {GRACE_S:.0f} s past its share is killed, so the whole run stays under 8 minutes)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of verification, ops, training")
    parser.add_argument("--section-only", choices=("environment", *SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--deadline-epoch", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--grace-s", type=float, default=GRACE_S, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section_only:
        return _child(args)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    start = time.time()
    os.environ["GPU_VERIFY_COMMAND"] = " ".join(["python", *sys.argv])  # named in the results, not a child's
    import torch  # the parent only asks whether CUDA exists; the sections' processes use the device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    part = out.with_name(out.name + ".part")
    env = _run_section("environment", args, device, start + args.budget_s, start + 120, part)[0]
    report = Report(out, {**env, "budget_s": args.budget_s})
    report.write()
    _log(f"{env.get('device', device)}: torch {env.get('torch')}, triton {env.get('triton')} "
         f"({env.get('triton_reason', env.get('error'))}); advssm from {env.get('advssm_from')}")
    for name in wanted:
        deadline = start + args.budget_s * SHARE[name]
        report.section(name, _run_section(name, args, device, deadline, deadline + args.grace_s, part))
    part.unlink(missing_ok=True)
    report.data["seconds"] = round(time.time() - start, 1)
    report.write()
    text = markdown(report.data)
    print(text)
    doc = Path(args.doc) if args.doc else (ROOT / "docs" / "performance.md" if device.startswith("cuda") else None)
    if doc is not None:
        write_doc_rows(doc, text)
        _log(f"wrote the GPU rows of {doc}")
    _log(f"done in {report.data['seconds']} s; JSON in {args.out}")
    ver = report.data["sections"].get("verification", [])
    broken = [name for name, rows in report.data["sections"].items()
              if any("error" in r and "op" not in r and "dataset" not in r for r in rows)]
    if any(r.get("ok") is False for r in ver) or broken:
        return 1
    if device.startswith("cuda") and not env.get("triton_usable"):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
