"""The ops package's layering: imports point one way (leaf -> dispatch -> ops; kernels import only
torch and triton), each op is one table entry, and the kernels load only when they are to run."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from advssm.ssm_layers import ops

OPS_DIR = Path(ops.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports (relative ones as ``.name`` / ``..name``), function-local ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found.add("." * node.level + (node.module or ""))
    return found


def test_kernel_modules_import_only_torch_and_triton():
    kernels = sorted((OPS_DIR / "triton").glob("*.py"))
    assert {p.name for p in kernels} >= {"selective_scan.py", "diag_scan.py", "vandermonde.py"}
    for path in kernels:  # besides torch and triton, the kernels' one shared helper (itself torch only)
        names = _imports(path) - {"._first_order", "functools"}
        roots = {name.split(".")[0] for name in names}
        assert roots <= {"torch", "triton"}, f"{path.name} imports {roots}"
    assert _imports(OPS_DIR / "triton" / "_first_order.py") <= {"functools", "torch"}


def test_imports_point_one_way():
    assert _imports(OPS_DIR / "_backend.py") <= {"os", "torch", "triton"}  # the leaf (triton: the probe)
    assert {m for m in _imports(OPS_DIR / "_dispatch.py") if m.startswith(".")} == {"._backend"}
    # op modules: dispatch, the leaf, each other and their torch-only helpers; never a kernel module
    siblings = {"." + p.stem for p in OPS_DIR.glob("*.py") if p.stem not in ("__init__", "_dispatch", "_backend")}
    for name in ("selective_scan.py", "diag_scan.py", "vandermonde.py", "fftconv.py", "ssd.py"):
        local = {m for m in _imports(OPS_DIR / name) if m.startswith(".")}
        assert local <= {"._dispatch", "._backend"} | siblings, f"{name} imports {local}"
        assert not any("triton" in m for m in _imports(OPS_DIR / name)), name
    for helper in (p for p in OPS_DIR.glob("_*.py") if p.stem not in ("__init__", "_dispatch", "_backend")):
        assert not any(m.startswith(".") for m in _imports(helper)), f"{helper.name} must import no op module"


def test_every_op_is_one_table_entry():
    assert set(ops.OPS) == {"selective_scan", "diag_scan", "vandermonde_kernel", "fft_conv", "ssd"}
    for name, op in ops.OPS.items():
        assert op.name == name and callable(op.check) and callable(op.reference) and callable(op.torch)
        if op.kernel is not None:
            module, function = op.kernel.split(":")
            assert (OPS_DIR / "triton" / f"{module}.py").is_file() and f"def {function}(" in (
                OPS_DIR / "triton" / f"{module}.py").read_text()
            assert callable(op.shape_class) and callable(op.example)
    assert ops.OPS["fft_conv"].kernel is None


def test_the_torch_path_never_imports_a_kernel_module():
    """With triton importable, running every op on the CPU (auto, torch, reference) and asking
    ``backends()`` loads no kernel module: they load only when a kernel is to run."""
    script = textwrap.dedent("""
        import sys
        import torch
        import advssm.ssm_layers as sl
        u = torch.randn(1, 2, 5)
        for backend in ("auto", "torch", "reference"):
            B = torch.randn(1, 3, 5)
            sl.selective_scan(u, u.abs(), -torch.ones(2, 3), B, B, backend=backend)
            sl.diag_scan(torch.rand(2, 1), u, backend=backend)
            sl.vandermonde_kernel(torch.ones(2, 3, dtype=torch.complex64), -torch.ones(2, 3) + 0j, 4, backend=backend)
            sl.ops.ssd(torch.randn(1, 5, 2, 3), torch.rand(1, 5, 2), -torch.ones(2), torch.randn(1, 5, 1, 4),
                       torch.randn(1, 5, 1, 4), chunk_size=2, backend=backend)
        sl.backends()
        loaded = [m for m in sys.modules if m.startswith("advssm.ssm_layers.ops.triton.")]
        assert not loaded, loaded
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("ADVSSM_BACKEND", "TRITON_INTERPRET")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "complex64"])
def test_tolerance_is_the_documented_one_widened_for_half_precision(dtype):
    import torch

    fwd, grad = ops.tolerance(getattr(torch, dtype))
    if dtype in ("float16", "bfloat16"):
        assert fwd["rtol"] > ops.FWD_TOL["rtol"] and grad["rtol"] > ops.GRAD_TOL["rtol"]
    else:
        assert (fwd, grad) == (ops.FWD_TOL, ops.GRAD_TOL)
