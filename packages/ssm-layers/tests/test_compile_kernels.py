"""``benchmarks/compile_kernels.py``: every Triton kernel compiled by Triton's real compiler for sm_80 and
sm_90 on this GPU-less machine, and the launch limits it checks.

The compile tests are marked ``kernels`` (they need triton; ``nox -s kernels`` runs them) and run the
script in a fresh process without ``TRITON_INTERPRET``, with an empty triton cache, so every kernel is
really compiled. The limit arithmetic needs no triton and runs in the default suite.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from advssm.ssm_layers.kernel_verification import CASES, case_name

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "compile_kernels.py"
KERNELS = {"_ssm_fwd_kernel", "_ssm_bwd_kernel", "_diag_scan_kernel", "_vandermonde_fwd_kernel",
           "_vandermonde_bwd_kernel", "_ssd_fwd_kernel", "_ssd_bwd_kernel"}
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (nox -s kernels)")


def _load_script():
    spec = importlib.util.spec_from_file_location("compile_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compiler_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ADVSSM_BACKEND")}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # empty: nothing is read from an earlier run
    return env


@pytest.mark.kernels
@needs_triton
def test_every_kernel_of_every_case_compiles_for_sm80_and_sm90_within_the_launch_limits(tmp_path):
    out = tmp_path / "compiled.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True,
                            env=_compiler_env(tmp_path), timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["ok"] and data["archs"] == [80, 90] and all(r["ok"] for r in rows)
    for arch in (80, 90):
        here = [r for r in rows if r["arch"] == arch]
        assert {r["kernel"] for r in here} == KERNELS  # forward and backward of every op
        # every case of both sets launched kernels, and each was compiled for this target
        launched = {c for r in here for c in r["cases"]}
        assert launched == {f"{which}:{case_name(op, case)}" for which in ("tests", "paper")
                            for op, cases in CASES[which].items() for case in cases}
        for r in here:
            assert r["fp_fusion"] is True and r["num_warps"] >= 1 and 0 < r["registers"] <= 255
            assert r["problems"] == []
    # sm_80 and sm_90 code differ: a kernel compiled for one target is not reused for the other
    assert {r["cubin_sha256"] for r in rows if r["arch"] == 80}.isdisjoint(
        {r["cubin_sha256"] for r in rows if r["arch"] == 90})
    assert "| sm_90 (H100, H200) | `_ssm_bwd_kernel` |" in result.stdout and "within the launch limits" in result.stdout


@pytest.mark.kernels
@needs_triton
def test_the_compiler_rejects_a_kernel_that_the_interpreter_runs(tmp_path):
    """Why the compile check exists: a loop-carried value that changes type runs (and gives the right
    sum) in the interpreter, while Triton's compiler refuses it."""
    (tmp_path / "loop_kernel.py").write_text(textwrap.dedent("""
        import triton
        import triton.language as tl


        @triton.jit
        def sum_kernel(x_ptr, out_ptr, L):
            total = 0  # an int32 ...
            for t in range(L):
                total += tl.load(x_ptr + t)  # ... that becomes a float32 in the loop
            tl.store(out_ptr, total)
    """))
    (tmp_path / "launch.py").write_text(textwrap.dedent(f"""
        import os, sys
        import torch
        sys.path[:0] = [{str(tmp_path)!r}, {str(SCRIPT.parent)!r}]
        import loop_kernel
        x, out = torch.arange(5, dtype=torch.float32), torch.zeros(1)
        if os.environ.get("TRITON_INTERPRET") == "1":
            loop_kernel.sum_kernel[(1,)](x, out, 5)
            print("interpreted", out.item())
        else:
            import compile_kernels
            launches = []
            try:
                with compile_kernels.compile_only(90, launches):
                    loop_kernel.sum_kernel[(1,)](x, out, 5)
                print("compiled", len(launches))
            except Exception as exc:
                print("refused", type(exc).__name__, exc)
    """))
    env = _compiler_env(tmp_path)
    interpreted = subprocess.run([sys.executable, "launch.py"], capture_output=True, text=True, timeout=300,
                                 cwd=tmp_path, env={**env, "TRITON_INTERPRET": "1"})
    assert interpreted.stdout.split() == ["interpreted", "10.0"], interpreted.stderr[-2000:]
    compiled = subprocess.run([sys.executable, "launch.py"], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env=env)
    assert compiled.stdout.startswith("refused CompilationError"), compiled.stdout + compiled.stderr[-2000:]
    assert "Loop-carried variable total" in compiled.stdout


def test_the_launch_limits_of_a_compiled_kernel():
    check = _load_script().check_limits
    fits = {"registers": 255, "num_warps": 4, "num_ctas": 1, "shared_bytes": 200 * 1024, "static_shared_bytes": 0}
    assert check(fits, 90) == []
    assert check(fits, 80) == [f"{200 * 1024} bytes of shared memory > {163 * 1024} per block"]
    assert check({**fits, "num_warps": 8, "shared_bytes": 0}, 90) == []  # 255 x 256 threads: 65280 registers
    sixteen_warps = {**fits, "num_warps": 16, "shared_bytes": 0}
    assert check(sixteen_warps, 90) == ["255 registers x 512 threads > 65536 per block"]
    assert check({**fits, "registers": 256, "shared_bytes": 0}, 80) == ["256 registers per thread > 255"]


def test_compile_kernels_refuses_to_run_under_the_interpreter(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90"], capture_output=True, text=True,
                            env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "unset it to compile" in result.stderr
    unknown = subprocess.run([sys.executable, str(SCRIPT), "--arch", "75"], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown --arch [75]" in unknown.stderr
