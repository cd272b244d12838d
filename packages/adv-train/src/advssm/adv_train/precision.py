"""Mixed precision (``TrainConfig.precision``): the model's forward under autocast, everything after the logits in fp32.

    with autocast_forward(model, "bf16", torch.device("cpu")):
        logits = model(x)          # matmuls in bf16 (the SSM cores stay fp32: the layers turn autocast off there)
        logits.dtype               # torch.float32: losses, margins, DLR / FAB arithmetic run in fp32

Only the model's own forward runs under autocast: a forward pre-hook enters it and a forward hook
(``always_call``, so also when the forward raises) leaves it and casts the floating outputs to fp32.
The loss, the backward and the attacks' arithmetic thus run outside autocast, as PyTorch advises, for
every caller of the model (training methods, evaluation, attacks, callbacks) without any of them
knowing. fp16 needs a CUDA device and loss scaling (``grad_scaler``); on the CPU use bf16, which has
fp32's range and needs no scaling.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .config import PRECISIONS

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32); ValueError where it cannot run.

    Example:
        >>> check_precision("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (loss-scaled fp16 autocast), and this run is on "
                         f"{device}; use precision 'bf16' (or 'fp32') there")
    return AUTOCAST_DTYPES[precision]


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 needs (its small range underflows gradients); None for fp32 and bf16.

    Example:
        >>> grad_scaler("bf16", torch.device("cpu")) is None
        True
    """
    check_precision(precision, device)
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def _fp32(output):
    """Floating tensors below fp32 (in a tuple, list or dict too) cast to fp32; anything else as it is."""
    if isinstance(output, torch.Tensor):
        low = output.is_floating_point() and output.dtype in (torch.float16, torch.bfloat16)
        return output.float() if low else output
    if isinstance(output, (tuple, list)):
        return type(output)(_fp32(o) for o in output)
    if isinstance(output, dict):
        return {k: _fp32(v) for k, v in output.items()}
    return output


@contextlib.contextmanager
def autocast_forward(model: nn.Module, precision: str, device: torch.device) -> Iterator[None]:
    """Inside the block every forward of ``model`` runs under ``torch.autocast`` in ``precision``'s dtype
    on ``device``'s type and returns fp32 outputs; with ``"fp32"`` nothing changes. The hooks are removed
    on leaving the block.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> with autocast_forward(model, "bf16", torch.device("cpu")):
        ...     model(torch.rand(2, 4)).dtype
        torch.float32
    """
    dtype = check_precision(precision, device)
    if dtype is None:
        yield
        return
    regions: list[torch.autocast] = []  # one per forward in flight (a forward may call the model again)

    def enter(module, args):
        region = torch.autocast(device_type=device.type, dtype=dtype)
        region.__enter__()
        regions.append(region)

    def leave(module, args, output):
        regions.pop().__exit__(None, None, None)
        return _fp32(output)

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
