"""Samplers: per-epoch seeded shuffling (exact resumes), length grouping, and per-process shards.

Every shuffle is a function of (seed, epoch), so a run resumed from a checkpoint sees the same
order; under DDP each process takes its own share, and evaluation counts every example once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def process_shard() -> tuple[int, int]:
    """(rank, number of processes) while torch.distributed runs (DDP, FSDP), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ProcessSharded:
    """A sampler that gives each training process its own share of the data.

    The rank is read when the sampler is iterated, not when it is made: `train.py` makes its
    evaluation loaders before Lightning starts the other processes. Lightning's own replacement of
    samplers (`use_distributed_sampler`) is off in `conf/trainer`: its `DistributedSampler` pads an
    evaluation split to a multiple of the processes, so some examples would count twice. `shard`
    fixes (rank, processes) instead, for tests.
    """

    shard: tuple[int, int] | None = None

    def processes(self) -> tuple[int, int]:
        return self.shard or process_shard()


def pad_cyclic(order: list[int], size: int) -> list[int]:
    """`order` repeated from its start up to `size` items (as `DistributedSampler` pads)."""
    return (order * (size // max(1, len(order)) + 1))[:size]


class EpochSeeded(ProcessSharded):
    """Shuffling from (seed, epoch) alone, so a run resumed from a checkpoint sees the same order.

    The seed is drawn from torch's global generator when the sampler is made (so `seed_everything`
    fixes it); Lightning calls `set_epoch` before every epoch.
    """

    def __init__(self) -> None:
        self.seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)


class EpochShuffleSampler(EpochSeeded, Sampler[int]):
    """A fresh permutation of the dataset every epoch.

    With several processes, every one draws the same permutation (same seed) and keeps every n-th
    index, padded from the start so that all take the same number of steps.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=self.generator()).tolist()
        rank, world = self.processes()
        if world > 1:
            order = pad_cyclic(order, len(self) * world)[rank::world]
        yield from order

    def __len__(self) -> int:
        return -(-self.size // self.processes()[1])


class SequentialShardSampler(ProcessSharded, Sampler[int]):
    """The split in order; with several processes, one contiguous slice each, every example once.

    149 validation examples over 2 processes are slices of 74 and 75: distributed evaluation
    counts exactly the examples a single process does.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def _slice(self) -> range:
        rank, world = self.processes()
        return range(self.size * rank // world, self.size * (rank + 1) // world)

    def __iter__(self) -> Iterator[int]:
        yield from self._slice()

    def __len__(self) -> int:
        return len(self._slice())


class LengthGroupedBatchSampler(EpochSeeded, Sampler[list[int]]):
    """Batches of similar length, to pad less: shuffle, sort within windows of batches, shuffle batches.

    With `shuffle=False` batches follow sorted length (longest first). With several processes,
    every one makes the same batches and takes every n-th; in training (`drop_last`) the batches
    are first cut to a multiple of the processes, so that all take the same number of steps.
    """

    def __init__(
        self, lengths: list[int], batch_size: int, shuffle: bool, drop_last: bool, window: int = 50
    ) -> None:
        super().__init__()
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.window = window * batch_size

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        rank, world = self.processes()
        if self.drop_last:
            batches = batches[: len(batches) // world * world]
        yield from batches[rank::world]

    def _batches(self) -> list[list[int]]:
        if not self.shuffle:
            order = sorted(range(len(self.lengths)), key=self.lengths.__getitem__, reverse=True)
            return self._cut(order)
        generator = self.generator()
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
        rank, world = self.processes()
        return count // world if self.drop_last else len(range(rank, count, world))
