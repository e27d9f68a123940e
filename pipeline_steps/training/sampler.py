"""Which images each step trains on: one global batch per step, each process taking its slice.

:class:`GlobalBatchSampler` draws the same global batches whatever the number of processes (``batch_size`` is
the GLOBAL batch), with optional repeated augmentation; it can skip the batches a resumed run already trained
on. :class:`Indexed` adds each item's dataset index, which the teacher cache is read by.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from pipeline_steps.errors import UserError

__all__ = ["GlobalBatchSampler", "Indexed"]


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's slice of each global batch; the global order is a function of (seed, epoch) only.

    The epoch's order is a seeded permutation (with ``repeats > 1``, DeiT's repeated augmentation: each index
    repeated ``repeats`` times in a row, the list cut back to the dataset length), cut into global batches of
    ``batch_size`` (the last partial one dropped). Rank ``r`` of ``world`` takes the r-th contiguous slice of
    every global batch, so K ranks together see exactly what one process sees.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, repeats: int = 1, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise UserError(f"train.batch_size = {batch_size} is not divisible by the {world} processes; "
                            "make it a multiple of the process count")
        if n < batch_size:
            raise UserError(f"train.batch_size = {batch_size} but the training set has only {n} images; "
                            "lower the batch size")
        self.n, self.batch_size, self.seed, self.repeats = n, batch_size, seed, repeats
        self.rank, self.world = rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's order and skip its first ``skip`` batches (a mid-epoch resume)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)[: self.n]
        local = self.batch_size // self.world
        for b in range(self.skip, len(self)):
            start = b * self.batch_size + self.rank * local
            yield order[start: start + local].tolist()


class Indexed(Dataset):
    """Yields ``(image, label, index)``: the index finds the image's cached teacher outputs."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image, label = self.base[index]
        return image, label, index
