"""``benchmarks/gpu_verify.py``, the one-command GPU verification, run for real on the CPU: Triton
kernels under the interpreter at tiny sizes, the PyTorch paths, a training step of each layer and a
PGD-10 batch, the JSON file and the rewritten rows of a copy of docs/performance.md."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "gpu_verify.py"


def test_gpu_verify_dry_run_on_the_cpu(tmp_path):
    page = tmp_path / "performance.md"
    original = (ROOT / "docs" / "performance.md").read_text()  # read once: others may edit the page meanwhile
    page.write_text(original)
    out = tmp_path / "verify.json"
    env = {k: v for k, v in os.environ.items() if k != "ADVSSM_BACKEND"}
    env["TRITON_INTERPRET"] = "1"  # read by triton when it is imported, so set for the fresh interpreter
    result = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "tiny", "--device", "cpu", "--repeats", "1",
                             "--out", str(out), "--doc", str(page)],
                            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["device"].startswith("cpu") and data["sizes"] == "tiny" and data["torch"]
    sections = data["sections"]
    assert set(sections) == {"verification", "ops", "training"}

    verification = sections["verification"]
    ops_with_kernels = {"selective_scan", "diag_scan", "vandermonde_kernel", "ssd"}
    assert {r["op"] for r in verification} == ops_with_kernels
    if importlib.util.find_spec("triton") is not None:  # the kernels ran in the interpreter and agreed
        assert all(r["ok"] is True for r in verification), verification
        checks = [(r["op"], r["case"]) for r in verification if "first-use check" in r["case"]]
        # fp32, bf16 and fp16 inputs for the real-valued ops (selective scan, SSD, the real diagonal scan),
        # complex64 for the complex diagonal scan and the Vandermonde kernel
        assert len(checks) == 11 and sum("bfloat16 inputs" in case for _, case in checks) == 3, checks
    else:  # without triton every case says why it did not run; nothing is counted as passed
        assert all(r["ok"] is None and "not importable" in r["skipped"] for r in verification), verification

    timing = {r["op"]: r for r in sections["ops"]}
    assert set(timing) == ops_with_kernels | {"fft_conv"}
    for op, row in timing.items():
        assert row["torch_fwd_ms"] > 0 and row["torch_fwd_bwd_ms"] > 0 and row["copy_ms"] > 0 and row["bytes"] > 0
        if op != "fft_conv" and importlib.util.find_spec("triton") is not None:
            assert row["triton_fwd_ms"] > 0 and row["speedup_fwd_bwd"] > 0, row

    training = sections["training"]
    assert {r["layer"] for r in training} == {"s4", "dss", "s5", "mega", "s6"}
    for row in training:
        assert "error" not in row, row
        assert row["step_ms"] > 0 and row["pgd10_ms"] > 0 and row["epoch_pgd_at_min"] > row["epoch_st_min"] > 0
        assert row["step_bf16_ms"] > 0 and abs(row["bf16_speedup"] * row["step_bf16_ms"] - row["step_ms"]) < 1e-6

    text = page.read_text()
    rows = text[text.index("<!-- gpu_verify: begin -->"):text.index("<!-- gpu_verify: end -->")]
    assert "not yet measured" not in rows.lower() and "cpu" in rows and "| s6 |" in rows and "PGD-10" in rows
    assert text.replace(rows, "") == original.replace(_between_markers(original), "")  # nothing else changed


def _between_markers(text: str) -> str:
    return text[text.index("<!-- gpu_verify: begin -->"):text.index("<!-- gpu_verify: end -->")]


def test_gpu_verify_without_triton_says_why_and_still_times_the_torch_paths(tmp_path):
    shim = tmp_path / "no_triton" / "triton"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('triton is hidden by the test')\n")
    out = tmp_path / "verify.json"
    env = {k: v for k, v in os.environ.items() if k not in ("ADVSSM_BACKEND", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join([str(shim.parent), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "tiny", "--device", "cpu", "--repeats", "1",
                             "--sections", "verification,ops", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(out.read_text())
    assert not data["triton_usable"] and "not importable" in data["triton_reason"]
    assert all(r["ok"] is None and "pip install" in r["skipped"] for r in data["sections"]["verification"])
    for row in data["sections"]["ops"]:
        assert row["torch_fwd_ms"] > 0 and "triton_fwd_ms" not in row
        assert row["op"] == "fft_conv" or "not importable" in row["triton_error"]
    assert "| kernel | cases |" in result.stdout  # the rows are printed; no page was named, none is written


def test_a_section_that_crashes_or_hangs_costs_only_that_section(tmp_path):
    """Each section runs in its own process: one that dies (as after a CUDA fault) is recorded as failed
    and the next section still runs; one that hangs is killed at its deadline plus the grace time. Either
    fails the run (exit status 1)."""
    out = tmp_path / "verify.json"
    env = {k: v for k, v in os.environ.items() if k not in ("ADVSSM_BACKEND", "TRITON_INTERPRET")}

    def run(fault, sections, budget):
        result = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "tiny", "--device", "cpu", "--repeats", "1",
                                 "--sections", sections, "--budget-s", budget, "--grace-s", "2", "--out", str(out)],
                                capture_output=True, text=True, env={**env, "GPU_VERIFY_TEST_FAULT": fault},
                                timeout=600, cwd=tmp_path)
        assert result.returncode == 1, result.stderr[-3000:]
        return result, json.loads(out.read_text())["sections"]

    result, sections = run("verification:crash", "verification,ops", "300")
    assert len(sections["verification"]) == 1 and "exited with status 3" in sections["verification"][0]["error"]
    assert {r["op"] for r in sections["ops"]} == {"selective_scan", "diag_scan", "vandermonde_kernel", "fft_conv",
                                                  "ssd"}
    assert all("torch_fwd_ms" in r for r in sections["ops"])  # the next section ran in full
    assert f"The verification section failed**: {sections['verification'][0]['error']}" in result.stdout

    start = time.monotonic()
    _, sections = run("ops:hang", "ops", "8")  # ops' deadline: 65 % of 8 s, killed 2 s later
    assert len(sections["ops"]) == 1 and "was killed" in sections["ops"][0]["error"]
    assert time.monotonic() - start < 60
