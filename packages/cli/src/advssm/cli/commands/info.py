"""``advssm info``: versions, kernel backends and the device."""
from __future__ import annotations

import platform
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

import click
import torch
from advssm.ssm_layers import LAYERS
from advssm.ssm_layers.layers.scans import SCANS
from advssm.ssm_layers.model import PRESETS, VISION_PRESETS

from ..output import emit

PACKAGES = ("advssm-ssm-layers", "advssm-adv-train", "advssm-ads", "advssm-cli", "torch", "triton", "safetensors",
            "numpy", "click")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _backends(device) -> dict:
    """{op: {backend: {"available", "reason"}}} from advssm-ssm-layers, for ``device``."""
    try:
        return import_module("advssm.ssm_layers").backends(device)
    except (ImportError, AttributeError) as exc:
        return {"error": f"this advssm-ssm-layers cannot report its backends ({exc})"}


def _backend_lines(report: dict) -> list[str]:
    """One line per op with the backends that run here, then each missing backend once with the reason."""
    if "error" in report:
        return [f"{'backends':18} {report['error']}"]
    lines, missing = ["backends (per op):"], {}
    for op, entries in report.items():
        lines.append(f"  {op:18} {', '.join(name for name, entry in entries.items() if entry['available'])}")
        missing.update({name: entry["reason"] for name, entry in entries.items() if not entry["available"]})
    return lines + [f"  {name} not available: {reason}" for name, reason in missing.items()]


def _models() -> dict:
    """The layers, scan orders and model presets this advssm-ssm-layers builds."""
    return {"layers": list(LAYERS), "scans": list(SCANS), "presets": [*PRESETS, *VISION_PRESETS],
            "tokens": "pixels (default) or p x p patches (model.patch_size, --patch-size)"}


def collect() -> dict:
    """Everything ``info`` prints, as a dict."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    return {
        "versions": {dist: _version(dist) for dist in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": _backends(device),
        "models": _models(),
        "device": {"cuda": cuda, "name": torch.cuda.get_device_name(0) if cuda else "cpu",
                   "cpu_threads": torch.get_num_threads()},
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(as_json: bool) -> None:
    """Versions of the advssm packages, torch and triton; kernel backends; the device; the layers, scan
    orders (causal, bidirectional, cross2d), tokens (pixels or patches) and model presets.

    \b
    Examples:
      advssm info
      advssm info --json
    """
    data = collect()
    lines = [f"{dist:18} {ver or 'not installed'}" for dist, ver in data["versions"].items()]
    lines += [f"{'python':18} {data['python']} ({data['platform']})",
              f"{'device':18} {data['device']['name']} (torch threads: {data['device']['cpu_threads']})",
              *(f"{key:18} {value if isinstance(value, str) else ', '.join(value)}"
                for key, value in data["models"].items()),
              *_backend_lines(data["backends"])]
    emit(data, as_json, "\n".join(lines))
