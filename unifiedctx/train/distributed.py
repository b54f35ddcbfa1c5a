"""DistributedDataParallel from the environment that ``torchrun`` sets.

Under ``torchrun --nproc_per_node=K`` (or ``python -m torch.distributed.run``) every process sees
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`setup` starts
the process group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE > 1``; without those variables the
run is a single process and nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` on the node, and
    whether :func:`setup` created the process group (and so should destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device_type: str) -> DistContext:
    """Join (or start) the process group described by the environment; a no-op for one process."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        return DistContext(dist.get_rank(), dist.get_world_size(), local, created=False)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local, created=True)


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.created and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (nothing to do for one process)."""
    if ctx.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()
