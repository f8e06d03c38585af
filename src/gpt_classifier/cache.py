"""The frozen-trunk cache: run the frozen lower blocks once per example, train the tail on the result.

With the book's policy only the last block, `final_norm` and the head learn, so blocks 0..k-1 give
the same hidden states for a message in every epoch. We compute the states entering block k once
(pure inference, in large length-sorted batches) and keep per example only the positions the tail
reads: with the causal mask, the prefix up to the read position (or the real tokens for mean
pooling); without it, every position. Results are exact: the tail sees the same numbers it would
have computed itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from gpt_classifier.data import EncodedDataset
from gpt_classifier.model import GPTModel, Packing, Pooling, Position, run_blocks

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


def cache_problem(
    model: GPTModel, start_block: int, padding: str, position: Position, pooling: Pooling
) -> str | None:
    """Why the trunk below `start_block` cannot be cached, or None when it can."""
    if start_block == 0:
        return "nothing below the first trainable block is frozen (the policy trains every block)"
    if model.cfg.drop_rate > 0:
        return f"dropout (drop_rate={model.cfg.drop_rate}) makes the frozen blocks random during training"
    if padding == "dynamic" and (not model.cfg.causal or (pooling == "token" and position == "last")):
        return (
            "with batch-dependent padding the read position's input depends on the batch "
            "(use data.padding=max_length, or classifier.position=flexible with the causal mask)"
        )
    return None


@dataclass
class CachedSplit:
    """Stored hidden states of one split: a `[L_i, D]` prefix per example and where to read it."""

    states: list[Tensor]
    read_pos: Tensor
    lengths: Tensor

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Hidden states `[B, max L_i, D]` (zero-padded at the end), read positions and lengths."""
        index = index.cpu()
        x = pad_sequence([self.states[i] for i in index.tolist()], batch_first=True)
        device = x.device
        return x, self.read_pos[index].to(device), self.lengths[index].to(device)

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)


@torch.no_grad()
def build_cache(
    model: GPTModel,
    start_block: int,
    dataset: EncodedDataset,
    pad_to: int | None,
    position: Position,
    pooling: Pooling,
    pad_token_id: int,
    batch_rows: int = 1024,
) -> CachedSplit:
    """Hidden states entering `start_block` for every example of `dataset`.

    `pad_to` is the padded length the uncached path would see (None: unpadded). Examples are sorted
    by length and run packed (`Packing`: no work on padding), about `batch_rows` tokens at a time.
    """
    device = next(model.parameters()).device
    n_layers = len(model.trf_blocks)
    views, reads, keep = [], [], []
    for ids in dataset.token_ids:
        view_len = pad_to or len(ids)
        read = {"last": view_len - 1, "first": 0, "flexible": len(ids) - 1}[position]
        if not model.cfg.causal:
            needed = view_len
        elif pooling == "mean":
            needed = len(ids)
        else:
            needed = read + 1
        views.append((ids + [pad_token_id] * (view_len - len(ids)))[:needed])
        reads.append(read)
        keep.append(needed)
    only_read = start_block == n_layers and pooling == "token"  # no attention above: one position
    stored = [1 if only_read else n for n in keep]
    order = sorted(range(len(views)), key=keep.__getitem__, reverse=True)
    # All states in one tensor, in length order: no heap fragmented by thousands of small tensors.
    storage = model.tok_emb.weight.new_empty(sum(stored), model.cfg.emb_dim)
    offset = 0
    for chunk in _chunks(order, keep, batch_rows):
        width = keep[chunk[0]]
        batch_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            batch_ids[row, : keep[i]] = torch.tensor(views[i])
        packing = Packing(torch.tensor([keep[i] for i in chunk], device=device), width)
        rows = packing.pack(model.embed(batch_ids.to(device)))
        rows = run_blocks(model.trf_blocks[:start_block], rows, packing)
        if only_read:
            rows = packing.take(rows, torch.tensor([reads[i] for i in chunk], device=device))[:, 0]
        storage[offset : offset + len(rows)] = rows
        offset += len(rows)
    states: list[Tensor] = [storage[:0]] * len(views)
    for i, state in zip(order, storage.split([stored[i] for i in order]), strict=True):
        states[i] = state
    read_pos = torch.zeros(len(views), dtype=torch.long) if only_read else torch.tensor(reads)
    lengths = torch.tensor([len(ids) for ids in dataset.token_ids])
    return CachedSplit(states, read_pos, lengths)
