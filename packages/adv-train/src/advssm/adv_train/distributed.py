"""torch.distributed plumbing for the trainer: process-group setup from torchrun's environment, batch
sharding, gradient averaging and metric reduction. Every function is a no-op in a single process."""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` picks the GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and prints."""
        return self.rank == 0


def init_from_env(use_cuda: bool) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or return a one-process DistInfo.

    The backend is NCCL on GPUs, gloo on the CPU. An already initialised group is reused.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard(batch: Tensor, info: DistInfo) -> Tensor:
    """This rank's contiguous share of a global batch of indices (sizes differ by at most one)."""
    return batch.tensor_split(info.world_size)[info.rank] if info.active else batch


def broadcast_module(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank so all start from the same weights."""
    if info.active:
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def average_grads(params: Sequence[Tensor], local_n: int, global_n: int, info: DistInfo) -> None:
    """Turn each rank's mean-over-its-shard gradient into the mean over the global batch.

    Each rank's gradient is weighted by its share ``local_n / global_n`` before the sum, so uneven shards
    give exactly the one-process gradient (up to summation order). Missing gradients count as zero.
    """
    if not info.active:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.mul_(local_n / global_n)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def all_reduce_sums(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Sum each named number across ranks (counts and totals, never ratios)."""
    if not info.active or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not info.active:
        return [obj]
    # not dist.all_gather_object: it decodes through numpy, which torch (and so this package) does not require
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([payload.numel()], device=device))
    padded = torch.zeros(max(int(n) for n in sizes), dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    chunks = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(chunks, padded)
    # the payloads are this run's own ranks' states (RNG states, method state), never outside data
    return [pickle.loads(bytes(chunk[: int(n)].cpu().tolist())) for chunk, n in zip(chunks, sizes)]


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.active:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly at the end of a torchrun script.

    Every rank waits for the others before destroying the group: a rank that tears gloo down while
    another is still writing its files can abort ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
