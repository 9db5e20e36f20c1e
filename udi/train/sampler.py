"""A distributed sampler that can start in the middle of an epoch (exact resume)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Per-epoch seeded permutation, cut to whole global batches and sharded by rank.

    Rank r takes the r-th block of ``batch_size`` indices of every global batch, so the
    images of a global batch are the same whatever the world size's sharding. ``set_epoch``
    chooses the epoch and the number of batches of it already done.
    """

    def __init__(self, dataset_size: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0):
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.dataset_size // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator)
        global_batch = self.batch_size * self.world_size
        batches = order[: self.batches_per_epoch * global_batch].view(self.batches_per_epoch, self.world_size, self.batch_size)
        yield from batches[self.start_batch :, self.rank].flatten().tolist()
