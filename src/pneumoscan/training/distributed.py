"""Distributed setup for training under ``torchrun``: which rank this process is, on which device, and how the
ranks share results. A plain ``python`` run is a world of one on which every helper here is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pneumoscan.errors import ConfigError

__all__ = ["Dist", "gather", "setup_distributed"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, computing on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on rank 0, the only rank that writes the run folder."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device_pref: str) -> Dist:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE``, ``LOCAL_RANK``), or
    return a world of one. ``device_pref`` is ``train.device``: ``"auto"``, ``"cuda"`` or ``"cpu"``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available")
    if world <= 1:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Dist(rank=rank, world=dist.get_world_size(), device=device)


def gather(obj: Any, d: Dist) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` in a world of one)."""
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
