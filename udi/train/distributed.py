"""One code path for CPU, one GPU and torchrun DDP (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceUnavailable(ValueError):
    """The device asked for is not there (cuda without a GPU): a user's setting, not a crash."""


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DeviceUnavailable("device cuda was asked for (train.device=cuda or --device cuda) but torch sees no "
                                    "CUDA GPU (use cpu or auto)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class DistributedTimeout(TimeoutError):
    """A collective got no answer from some process within ``train.dist_timeout`` seconds."""


def init_distributed(device_preference: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; starts the process group when world > 1.
    ``timeout_s``: how long a collective waits for the other processes (``train.dist_timeout``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a copy); identity without a process group."""
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_lists(items: list) -> list:
    """The concatenation of every process's ``items`` (small lists of Python objects); the list
    itself without a process group. Every process must call it."""
    if dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, items)
        return [x for part in gathered for x in part]
    return list(items)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
