"""Compile every Triton kernel for NVIDIA GPUs ahead of time, on a machine without a GPU.

    python benchmarks/compile_kernels.py                       # sm_80 and sm_90, the "tests" and "paper" cases
    python benchmarks/compile_kernels.py --arch 90 --json compiled.json

Why: the kernel tests run the kernels under ``TRITON_INTERPRET=1``, which executes their Python
with NumPy; it accepts code that Triton's compiler rejects (a loop-carried value that changes
type, a block shape that is not a power of two, an unsupported op) and it cannot say whether a
kernel fits the hardware. This runs Triton's real compiler (front end, MLIR passes, LLVM, and the
``ptxas`` shipped with the triton wheel) on every specialisation that the kernel wrappers launch,
forward and backward, for the kernel-verification cases at the kernel tests' and at the paper's
sizes (``advssm.ssm_layers.kernel_verification.CASES``), for each target architecture. Nothing is
launched: a stand-in driver names the target, and each launch becomes triton's own warm-up
(compile, no run), so the specialisations (constexprs, integer and pointer-alignment
specialisation, launch options) are exactly those of a real launch.

Each compiled kernel's resources are read from its cubin (``cuobjdump -res-usage``, also shipped
with triton) and checked against the architecture's limits: registers per thread (255), registers
per block (65536), and shared memory per block (opt-in maximum: 163 KiB on sm_80, 227 KiB on
sm_90). A kernel over a limit would fail to launch ("out of resources"). Spilled bytes (local
memory, and the stack frame ptxas spills into) are reported, not failed: a spill costs speed, not
correctness.

What this does not show: that the compiled code computes the right numbers. Only a GPU shows that:
``benchmarks/gpu_verify.py``. Exit status: 0 when every specialisation compiled within the limits,
1 otherwise, 2 when this machine cannot compile at all (triton missing, TRITON_INTERPRET set).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Per-block limits of NVIDIA compute capabilities (CUDA C Programming Guide, "Technical Specifications
# per Compute Capability"): opt-in shared memory per block, registers per block and per thread.
LIMITS = {
    80: {"name": "sm_80 (A100)", "shared": 163 * 1024, "regs_per_block": 65536, "regs_per_thread": 255},
    86: {"name": "sm_86 (RTX 30xx, A40)", "shared": 99 * 1024, "regs_per_block": 65536, "regs_per_thread": 255},
    89: {"name": "sm_89 (L4, L40, RTX 40xx)", "shared": 99 * 1024, "regs_per_block": 65536, "regs_per_thread": 255},
    90: {"name": "sm_90 (H100, H200)", "shared": 227 * 1024, "regs_per_block": 65536, "regs_per_thread": 255},
}
RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _import_advssm():
    """advssm.ssm_layers from the installed package, or from this source tree when it is not installed."""
    try:
        import advssm.ssm_layers  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "packages" / "ssm-layers" / "src"))
        for name in [m for m in sys.modules if m == "advssm" or m.startswith("advssm.")]:
            del sys.modules[name]
        import advssm.ssm_layers  # noqa: F401


class _TargetDriver:
    """Stands in for triton's CUDA driver where there is no GPU: it only names the target."""

    def __init__(self, target):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        # triton keeps compiled kernels per device: one "device" per architecture, so that a kernel
        # compiled for one target is never returned for another
        return self.target.arch

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")


@contextlib.contextmanager
def compile_only(arch: int, launches: list):
    """Inside the block every ``kernel[grid](...)`` compiles for ``sm_<arch>`` and launches nothing;
    each launch appends (kernel name, constexprs, CompiledKernel) to ``launches``. Restores triton after."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    run = JITFunction.run

    def compile_instead(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        names = {p.name for p in self.params}  # the rest of kwargs are launch options (num_warps, ...)
        bound = inspect.signature(self.fn).bind(*args, **{k: v for k, v in kwargs.items() if k in names}).arguments
        constexprs = {p.name: bound[p.name] for p in self.params if p.is_constexpr and p.name in bound}
        launches.append((self.fn.__name__, constexprs, kernel))
        return None

    saved = driver._active  # the driver triton would use; resetting would probe for a GPU
    driver.set_active(_TargetDriver(GPUTarget("cuda", arch, 32)))
    JITFunction.run = compile_instead
    try:
        yield
    finally:
        JITFunction.run = run
        driver._active = saved


def launch_cases(sizes: tuple[str, ...]):
    """(op, case name, thunk): each thunk runs one case's kernel forward and backward on the CPU (the
    launches compile only, so the outputs are never computed; only the wrappers' control flow runs)."""
    import torch
    from advssm.ssm_layers.kernel_verification import CASES, case_inputs, case_name
    from advssm.ssm_layers.ops import OPS, kernel_entry_point

    def thunk(op, case):
        def run():
            args = [a.requires_grad_() if isinstance(a, torch.Tensor) and (a.is_floating_point() or a.is_complex())
                    else a for a in case_inputs(op, case, "cpu")]
            outputs = kernel_entry_point(OPS[op])(*args)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            # every output feeds the loss, so the backward of each case sees a gradient for each
            sum(o.real.sum() if o.is_complex() else o.sum() for o in outputs).backward()
        return run

    for which in sizes:
        for op, cases in CASES[which].items():
            for case in cases:
                yield op, f"{which}:{case_name(op, case)}", thunk(op, case)


def resources(cubin: bytes, cuobjdump: str) -> dict:
    """Registers, stack, static shared memory and local (spill) bytes of the kernel in ``cubin``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([cuobjdump, "-res-usage", str(path)], capture_output=True, text=True,
                              check=True).stdout
    match = RESOURCE.search(text)
    if match is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{text}")
    regs, stack, shared, local = map(int, match.groups())
    return {"registers": regs, "stack_bytes": stack, "static_shared_bytes": shared, "local_bytes": local}


def check_limits(row: dict, arch: int) -> list[str]:
    """What about this compiled kernel would fail a launch on ``sm_<arch>``: [] when it fits."""
    limits = LIMITS[arch]
    threads = 32 * row["num_warps"] * row["num_ctas"]
    problems = []
    if row["registers"] > limits["regs_per_thread"]:
        problems.append(f"{row['registers']} registers per thread > {limits['regs_per_thread']}")
    if row["registers"] * threads > limits["regs_per_block"]:
        problems.append(f"{row['registers']} registers x {threads} threads > {limits['regs_per_block']} per block")
    shared = row["shared_bytes"] + row["static_shared_bytes"]
    if shared > limits["shared"]:
        problems.append(f"{shared} bytes of shared memory > {limits['shared']} per block")
    return problems


def compile_all(archs: list[int], sizes: tuple[str, ...], log=print) -> list[dict]:
    """One row per (architecture, distinct compiled kernel), or per case that failed to compile."""
    import triton

    cuobjdump = str(triton.knobs.nvidia.cuobjdump.path)
    rows = []
    for arch in archs:
        seen: dict[str, dict] = {}
        for op, case, run in launch_cases(sizes):
            launches: list = []
            start = time.perf_counter()
            try:
                with compile_only(arch, launches):
                    run()
            except Exception as exc:  # a kernel that does not compile is a failed row, and the next case runs
                message = f"{exc.__class__.__name__}: {str(exc).strip()[-1500:]}"
                rows.append({"arch": arch, "op": op, "case": case, "ok": False, "error": message})
                log(f"sm_{arch} {case}: FAILED to compile: {message}")
                continue
            seconds = time.perf_counter() - start
            for name, constexprs, kernel in launches:
                digest = hashlib.sha256(kernel.asm["cubin"]).hexdigest()[:16]
                if digest in seen:
                    seen[digest]["cases"].append(case)
                    continue
                meta = kernel.metadata
                if meta.target.arch != arch:
                    raise RuntimeError(f"asked for sm_{arch}, triton compiled {name} for {meta.target}")
                row = {"arch": arch, "op": op, "kernel": name, "constexprs": constexprs, "cases": [case],
                       "num_warps": meta.num_warps, "num_ctas": meta.num_ctas, "shared_bytes": meta.shared,
                       "cubin_sha256": digest, "fp_fusion": meta.enable_fp_fusion, "seconds": round(seconds, 2),
                       **resources(kernel.asm["cubin"], cuobjdump)}
                row["problems"] = check_limits(row, arch)
                row["ok"] = not row["problems"]
                seen[digest] = row
                rows.append(row)
            log(f"sm_{arch} {case}: {len(launches)} launches compiled in {seconds:.1f} s")
    return rows


def table(rows: list[dict]) -> str:
    """A markdown table: per architecture and kernel, how many specialisations, and their worst resources."""
    groups: dict[tuple, list[dict]] = {}
    failed = [r for r in rows if "kernel" not in r]
    for r in rows:
        if "kernel" in r:
            groups.setdefault((r["arch"], r["kernel"]), []).append(r)
    lines = ["| target | kernel | specialisations | registers / thread (max) | spilled: stack + local bytes (max) "
             "| shared memory / block (max) | within the launch limits |", "|---|---|---|---|---|---|---|"]
    for (arch, kernel), group in sorted(groups.items()):
        shared = max(g["shared_bytes"] + g["static_shared_bytes"] for g in group)
        spills = [g for g in group if g["stack_bytes"] + g["local_bytes"]]
        spilled = max(g["stack_bytes"] + g["local_bytes"] for g in group)
        where = f" ({', '.join(sorted({c for g in spills for c in g['cases']}))})" if spills else ""
        bad = [p for g in group for p in g["problems"]]
        lines.append(f"| {LIMITS[arch]['name']} | `{kernel}` | {len(group)} | {max(g['registers'] for g in group)} "
                     f"| {spilled}{where} | {shared / 1024:.1f} KiB "
                     f"| {'yes' if not bad else 'NO: ' + '; '.join(sorted(set(bad)))} |")
    for r in failed:
        lines.append(f"| {LIMITS[r['arch']]['name']} | {r['op']} ({r['case']}) | - | - | - | - "
                     f"| DID NOT COMPILE: {r['error'][:200]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="80,90",
                        help=f"compute capabilities to compile for, comma-separated, of {sorted(LIMITS)} "
                             "(default 80,90)")
    parser.add_argument("--sizes", default="tests,paper", help="kernel-verification case sets (default tests,paper)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",")]
    unknown = [a for a in archs if a not in LIMITS]
    if unknown:
        parser.error(f"unknown --arch {unknown}; choose from {sorted(LIMITS)}")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_kernels: TRITON_INTERPRET=1 replaces the compiler by the interpreter; unset it to compile",
              file=sys.stderr)
        return 2
    try:
        import torch
        import triton
    except ImportError as exc:
        print(f"compile_kernels: {exc}; pip install triton", file=sys.stderr)
        return 2
    _import_advssm()
    sizes = tuple(args.sizes.split(","))
    start = time.perf_counter()
    rows = compile_all(archs, sizes, log=lambda m: print(f"[compile_kernels] {m}", file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    print(table(rows))
    ok = all(r["ok"] for r in rows)
    kernels = [r for r in rows if "kernel" in r]
    print(f"\n{len(kernels)} distinct kernels compiled for {', '.join(f'sm_{a}' for a in archs)} from the "
          f"{' and '.join(sizes)} cases in {seconds:.0f} s (triton {triton.__version__}, torch {torch.__version__}; "
          f"kernels compiled by an earlier run are read from triton's cache, {triton.knobs.cache.dir}); "
          f"{'all within the launch limits' if ok else 'SOME FAILED'}")
    if args.json is not None:
        args.json.write_text(json.dumps({"triton": triton.__version__, "torch": torch.__version__,
                                         "python": platform.python_version(), "archs": archs, "sizes": sizes,
                                         "seconds": round(seconds, 1), "ok": ok, "rows": rows},
                                        indent=1, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
