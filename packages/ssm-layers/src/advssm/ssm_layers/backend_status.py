"""Which backend of which op can run here, and why not: ``backends()``."""
from __future__ import annotations

import torch

from .ops import OPS as _OP_TABLE
from .ops import triton_status

OPS = tuple(_OP_TABLE)


def backends(device: torch.device | str | None = None) -> dict[str, dict[str, dict[str, object]]]:
    """Availability of every op's backends on ``device`` (the CPU by default).

    Returns:
        ``{op: {backend: {"available": bool, "reason": str}}}`` for backends "reference",
        "torch" and (for the ops that have one) "triton"; ``reason`` explains a missing one
        and how to get it.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    try:
        triton_ok, triton_why = triton_status(device)
    except Exception as exc:  # a broken optional install must not break the report
        triton_ok, triton_why = False, f"the Triton kernels failed to load ({exc.__class__.__name__}: {exc})"
    report = {}
    for op in OPS:
        entry = {
            "reference": {"available": True, "reason": "sequential loop, any device"},
            "torch": {"available": True, "reason": f"PyTorch path on {device.type}"},
        }
        if _OP_TABLE[op].kernel is not None:  # fft_conv has none (torch.fft, any device)
            entry["triton"] = {"available": triton_ok, "reason": triton_why}
        report[op] = entry
    return report
