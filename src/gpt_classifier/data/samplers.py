"""Length-grouped batches: texts of similar length share a batch (less padding), still shuffled."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def draw_seed() -> int:
    """A shuffling seed from torch's global generator, so `seed_everything` fixes it."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length, to pad less: shuffle, sort within windows of batches, shuffle batches.

    The shuffle is a function of (seed, epoch); Lightning calls `set_epoch`. With `shuffle=False`
    batches follow sorted length (longest first). With several processes, every one makes the same
    batches and takes every n-th; in training (`drop_last`) the batches are first cut to a multiple
    of the processes, so that all take the same number of steps.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        rank: int = 0,
        world: int = 1,
        window: int = 50,
    ) -> None:
        self.seed = draw_seed()
        self.epoch = 0
        self.rank, self.world = rank, world
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.window = window * batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        rank, world = self.rank, self.world
        if self.drop_last:
            batches = batches[: len(batches) // world * world]
        yield from batches[rank::world]

    def _batches(self) -> list[list[int]]:
        if not self.shuffle:
            order = sorted(range(len(self.lengths)), key=self.lengths.__getitem__, reverse=True)
            return self._cut(order)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=self.lengths.__getitem__)
            batches.extend(self._cut(window))
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def _cut(self, order: list[int]) -> list[list[int]]:
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        count = full if self.drop_last or not rest else full + 1
        return count // self.world if self.drop_last else len(range(self.rank, count, self.world))
