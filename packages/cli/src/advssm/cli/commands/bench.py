"""``advssm bench``: the kernel benchmarks of advssm-ssm-layers."""
from __future__ import annotations

import click

from ..output import emit


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes only (seconds).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(quick, as_json):
    """Time the selective scan, diagonal scan, Vandermonde kernel and FFT convolution on every backend.

    \b
    Examples:
      advssm bench --quick
      advssm bench --json > bench.json
    """
    try:
        from advssm.ssm_layers.benchmark import run_benchmarks, to_markdown
    except ImportError as exc:
        raise RuntimeError(f"this advssm-ssm-layers has no benchmark module ({exc}); upgrade it") from exc
    results = run_benchmarks(quick=quick)
    emit({"results": results}, as_json, to_markdown(results))
