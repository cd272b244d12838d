"""``advssm info``: versions, kernels backends and the device."""
from __future__ import annotations

import platform
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

import click

from ..output import emit

PACKAGES = ("advssm-ssm-layers", "advssm-adv-train", "advssm-ads", "advssm-cli", "torch", "triton", "safetensors",
            "numpy", "click")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _backends() -> object:
    try:
        module = import_module("advssm.ssm_layers.backends")
    except ImportError:
        return "unknown (advssm.ssm_layers.backends not available)"
    for name in ("available_backends", "available", "describe"):
        if callable(getattr(module, name, None)):
            return getattr(module, name)()
    return [n for n in dir(module) if not n.startswith("_")]


def collect() -> dict:
    """Everything ``info`` prints, as a dict."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "versions": {dist: _version(dist) for dist in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": _backends(),
        "device": {"cuda": cuda, "name": torch.cuda.get_device_name(0) if cuda else "cpu",
                   "cpu_threads": torch.get_num_threads()},
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(as_json: bool) -> None:
    """Versions of the advssm packages, torch and triton; kernel backends; the device.

    \b
    Examples:
      advssm info
      advssm info --json
    """
    data = collect()
    lines = [f"{dist:18} {ver or 'not installed'}" for dist, ver in data["versions"].items()]
    lines += [f"{'python':18} {data['python']} ({data['platform']})", f"{'backends':18} {data['backends']}",
              f"{'device':18} {data['device']['name']} (torch threads: {data['device']['cpu_threads']})"]
    emit(data, as_json, "\n".join(lines))
