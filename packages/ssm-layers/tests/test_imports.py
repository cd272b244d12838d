"""Importing the libraries loads none of the optional heavy dependencies (they are imported where used)."""
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("triton", "submitit", "matplotlib", "transformers", "tensorboard", "mlflow", "wandb")


@pytest.mark.parametrize("package", ["advssm.ssm_layers"])
def test_importing_a_library_loads_no_optional_heavy_dependency(package):
    script = textwrap.dedent(f"""
        import sys
        import {package}
        import {package}.model, {package}.checkpoint, {package}.layers
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
        print(",".join(loaded) or "none")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "none", f"importing {package} loaded {out.stdout.strip()}"
