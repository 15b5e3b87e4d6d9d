"""DistributedDataParallel when launched by `torchrun` (DESIGN.md "Scale"); a no-op otherwise.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. Each process trains on its own shard of every
epoch's permutation with `batch_size` samples per step; gradients are averaged by DDP. Only rank 0
writes the run directory and reports progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank=dist.get_rank(), world=world, device=device)


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    if d.world == 1:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    # Per-step parameters (Mem-BN of step t, the leak at t = 0) are unused in some steps.
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def any_rank(flag: bool, d: Dist) -> bool:
    """Whether `flag` holds on any process: every rank gets the same answer, so all stop together."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
