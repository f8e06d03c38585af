"""Where the frozen-trunk cache keeps a split's states, and the spill files it must not leave behind.

`CachedSplit` holds one split's hidden states (in memory or memory-mapped) and hands the tail its
packed batches; `SPILLED` lists spill files still on disk, removed at exit if nobody did before.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gpt_classifier.model.packed import Packing

SPILLED: set[Path] = set()  # cache files still on disk: removed at exit if nobody did before


@atexit.register
def remove_spilled() -> None:
    for path in list(SPILLED):
        path.unlink(missing_ok=True)
        SPILLED.discard(path)


def token_chunks(order: list[int], sizes: list[int], budget: int) -> Iterator[list[int]]:
    """Consecutive runs of `order` whose `sizes` add up to at most `budget` (or one item, if larger)."""
    chunk: list[int] = []
    total = 0
    for i in order:
        if chunk and total + sizes[i] > budget:
            yield chunk
            chunk, total = [], 0
        chunk.append(i)
        total += sizes[i]
    if chunk:
        yield chunk


class CachedSplit:
    """Stored hidden states of one split: a `[needed_i, D]` prefix per example and where to read it."""

    def __init__(
        self, states: list[Tensor], read_pos: Tensor, lengths: Tensor, path: Path | None = None
    ) -> None:
        self.states, self.read_pos, self.lengths = states, read_pos, lengths
        self.needed = torch.tensor([len(s) for s in states])
        self.path = path  # the memory-mapped file holding the states, if they were spilled to disk

    def batch(self, index: Tensor, device: torch.device) -> dict[str, Any]:
        """The examples' states as packed rows `[sum needed, D]` (the layout `Packing` computes on, so
        nothing is padded and packed again), their `Packing`, and the tail's other inputs."""
        index = index.cpu()
        rows = torch.cat([self.states[i] for i in index.tolist()])
        needed = self.needed[index]
        return {
            "rows": rows.to(device, non_blocking=True),
            "packing": Packing(needed, int(needed.max())).to(device),  # built on the CPU: no device sync
            "read_pos": self.read_pos[index].to(device, non_blocking=True),
            "lengths": self.lengths[index].to(device, non_blocking=True),
        }

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)
