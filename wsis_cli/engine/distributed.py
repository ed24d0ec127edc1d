"""The process group ``torchrun`` describes: rank, world size, barriers and sums. A single process
gets a context of one, whose collectives are no-ops."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "dist_context"]


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives take their tensors (NCCL: the process's GPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def dist_context(device: torch.device) -> DistContext:
    """The process group torchrun describes (``WORLD_SIZE`` > 1), initialised here: NCCL on
    CUDA, gloo on CPU. A single process gets a context of one."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    where = "cpu"
    if device.type == "cuda":
        where = f"cuda:{local}"
        torch.cuda.set_device(torch.device(where))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local, where)
