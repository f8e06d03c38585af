"""The frozen-trunk cache: run the frozen lower blocks once per example, train the tail on the result.

With the book's policy only the last block, `final_norm` and the head learn, so blocks 0..k-1 give
the same hidden states for a message in every epoch. `TrunkCache` computes the states entering
block k once per split (pure inference, packed in length-sorted chunks) and keeps per example only
the positions the tail reads (`Reading.needed_lengths`): with the causal mask, the prefix up to
the read position (or the real tokens for mean pooling); without it, every position. Results are
exact: the tail sees the same numbers it would have computed itself. It takes token ids and
example indices; it knows nothing of data modules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from gpt_classifier.classifier import TextClassifier
from gpt_classifier.encoding import pad_batch
from gpt_classifier.model import Packing, run_blocks

log = logging.getLogger(__name__)


def _chunks(order: list[int], sizes: list[int], budget: int) -> Iterator[list[int]]:
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

    def __init__(self, states: list[Tensor], read_pos: Tensor, lengths: Tensor) -> None:
        self.states, self.read_pos, self.lengths = states, read_pos, lengths
        self.needed = torch.tensor([len(s) for s in states])

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


class TrunkCache:
    """Hidden states entering `start_block` (the first trainable block), per split, built on demand."""

    def __init__(self, classifier: TextClassifier, start_block: int, *, chunk_tokens: int = 1024) -> None:
        self.classifier = classifier
        self.start_block = start_block
        self.chunk_tokens = chunk_tokens
        self.splits: dict[str, CachedSplit] = {}
        # All builds so far, cleared splits included (the run's cache pass): wall and CPU seconds.
        self.build_seconds = self.build_cpu_seconds = 0.0

    @staticmethod
    def problem(classifier: TextClassifier, start_block: int) -> str | None:
        """Why the trunk below `start_block` cannot be cached exactly, or None when it can."""
        cfg, reading = classifier.model.cfg, classifier.reading
        if start_block == 0:
            return "nothing below the first trainable block is frozen (the policy trains every block)"
        if cfg.drop_rate > 0:
            return f"dropout (drop_rate={cfg.drop_rate}) makes the frozen blocks random during training"
        reads_padding = reading.pooling == "token" and reading.position == "last"
        if classifier.padding == "dynamic" and (not cfg.causal or reads_padding):
            return (
                "with batch-dependent padding the read position's input depends on the batch "
                "(use data.padding=max_length, or classifier.position=flexible with the causal mask)"
            )
        return None

    def __contains__(self, split: str) -> bool:
        return split in self.splits

    def batch(self, split: str, index: Tensor, device: torch.device) -> dict[str, Any]:
        """The tail's inputs for the examples `index` of a split built with `build`."""
        return self.splits[split].batch(index, device)

    def clear(self) -> None:
        self.splits.clear()

    @torch.no_grad()
    def build(self, split: str, token_ids: Sequence[Sequence[int]]) -> None:
        """Run the frozen blocks over every example of a split, as the uncached path would see it.

        Each example is seen padded to the training width (`max_length` padding) or unpadded; it is
        computed only up to what the tail reads, sorted by length and packed about `chunk_tokens`
        tokens at a time (`Packing`: no work on padding).
        """
        started, started_cpu = time.perf_counter(), time.process_time()
        classifier, model = self.classifier, self.classifier.model
        device = next(model.parameters()).device
        lengths = torch.tensor([len(ids) for ids in token_ids])
        widths = (
            torch.full_like(lengths, classifier.max_length) if classifier.padding == "max_length" else lengths
        )
        reads = classifier.reading.read_positions(lengths, widths)
        needed = classifier.reading.needed_lengths(lengths, widths).tolist()
        pad = classifier.pad_token_id
        views = [list(ids[:n]) + [pad] * (n - len(ids)) for ids, n in zip(token_ids, needed, strict=True)]
        # Without attention above (only the head learns), the read position alone is kept.
        single_position = self.start_block == len(model.trf_blocks) and classifier.reading.pooling == "token"
        stored = [1] * len(views) if single_position else needed
        order = sorted(range(len(views)), key=needed.__getitem__, reverse=True)
        # All states in one tensor, in length order: no heap fragmented by thousands of small tensors.
        storage = model.tok_emb.weight.new_empty(sum(stored), model.cfg.emb_dim)
        offset = 0
        for chunk in _chunks(order, needed, self.chunk_tokens):
            input_ids, chunk_lengths = pad_batch([views[i] for i in chunk], pad)
            packing = Packing(chunk_lengths.to(device), input_ids.shape[1])
            rows = packing.pack(model.embed(input_ids.to(device)))
            rows = run_blocks(model.trf_blocks[: self.start_block], rows, packing)
            if single_position:
                rows = packing.take(rows, reads[chunk].to(device))[:, 0]
            storage[offset : offset + len(rows)] = rows
            offset += len(rows)
        states: list[Tensor] = [storage[:0]] * len(views)
        for i, state in zip(order, storage.split([stored[i] for i in order]), strict=True):
            states[i] = state
        read_pos = torch.zeros_like(reads) if single_position else reads
        cached = self.splits[split] = CachedSplit(states, read_pos, lengths)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the pass ends when its kernels do
        self.build_seconds += time.perf_counter() - started
        self.build_cpu_seconds += time.process_time() - started_cpu
        log.info(
            "cached the frozen blocks 0-%d for %d %s examples: %.1f MB of hidden states (%d positions) "
            "in %.1f s",
            self.start_block - 1,
            len(states),
            split,
            cached.nbytes / 2**20,
            sum(stored),
            time.perf_counter() - started,
        )
