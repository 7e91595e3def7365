"""DDP plumbing kept out of the loop: who writes, how data is split, how numbers are reduced.

Launched by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the trainer
runs one process per rank: gloo on CPU, NCCL on CUDA. Rank 0 alone writes the run
directory; every reported number is the mean over ranks; a stop asked for on any rank
stops all of them at the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # set for multi-process runs (one device per rank)

    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        return cls(rank=rank, world_size=world, device=dev)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device and self.device.type == "cuda" else None)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's share of an index order: every rank gets the same count (padding by
        wrapping around, as DistributedSampler does), so all ranks take the same steps."""
        if not self.enabled:
            return order
        per_rank = self.shard_size(len(order))
        padded = torch.cat([order, order[: per_rank * self.world_size - len(order)]])
        return padded[self.rank::self.world_size]

    def shard_size(self, n: int) -> int:
        return -(-n // self.world_size)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def any_stop(self, local_stop: bool) -> bool:
        if not self.enabled:
            return local_stop
        flag = torch.tensor([1.0 if local_stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
