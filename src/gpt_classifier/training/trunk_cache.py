"""The frozen-trunk cache: run the frozen lower blocks once per example, train the tail on the result.

With the book's policy only the last block, `final_norm` and the head learn, so blocks 0..k-1 give
the same hidden states for a message in every epoch. `TrunkCache` computes the states entering
block k once per split (pure inference, packed in length-sorted chunks) and keeps per example only
the positions the tail reads (`Reading.needed_lengths`): with the causal mask, the prefix up to
the read position (or the real tokens for mean pooling); without it, every position. Results are
exact: the tail sees the same numbers it would have computed itself. It takes token ids and
example indices; it knows nothing of data modules.

Before each pass it estimates the split's size (positions x emb_dim x 4 bytes) and places it against
a budget (`budget_bytes`, else `share` of what the process may still use: `memory.py`): in memory
on the model's device; on a GPU, else in (pinned) host memory; else in a memory-mapped file in
`spill_dir` (the same fp32 numbers, read back per batch); else nowhere, and `build` says so. Its
files go at `clear()`, and at the latest when the process exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from gpt_classifier.data.encoding import pad_batch
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import TextClassifier
from gpt_classifier.model.packed import Packing, run_blocks
from gpt_classifier.training.cached_split import SPILLED, CachedSplit, token_chunks
from gpt_classifier.training.memory_budget import device_headroom, host_headroom

log = logging.getLogger(__name__)


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MB"


class TrunkCache:
    """Hidden states entering `start_block` (the first trainable block), per split, built on demand."""

    def __init__(
        self,
        classifier: TextClassifier,
        start_block: int,
        *,
        chunk_tokens: int = 1024,
        budget_bytes: int | None = None,
        share: float = 0.5,
        spill_dir: Path | None = None,
    ) -> None:
        self.classifier = classifier
        self.start_block = start_block
        self.chunk_tokens = chunk_tokens
        self.budget_bytes = budget_bytes  # None: `share` of what the process may still use
        self.share = share
        self.spill_dir = spill_dir  # where states past the budget go; None: nowhere (no cache)
        self.splits: dict[str, CachedSplit] = {}
        # All builds so far, cleared splits included (the run's cache pass): wall and CPU seconds.
        self.build_seconds = self.build_cpu_seconds = 0.0

    @classmethod
    def for_classifier(
        cls,
        classifier: TextClassifier,
        start_block: int,
        *,
        setting: bool | str = "auto",
        budget_gb: float | None = None,
        spill_dir: Path | None = None,
    ) -> TrunkCache | None:
        """The cache for `finetune.cache_frozen=setting`: `auto` when exact (else None, logged), `true`
        or one clear error saying why not, `false` never; `budget_gb` as in `finetune.cache_budget_gb`."""
        if setting not in (True, False, "auto"):
            raise GPTClassifierError(f"finetune.cache_frozen={setting!r} is unknown: use auto, true or false")
        if setting is False:
            return None
        problem = cls.problem(classifier, start_block)
        if problem and setting is True:
            raise GPTClassifierError(f"finetune.cache_frozen=true is impossible here: {problem}")
        if problem:
            log.info("frozen-trunk cache off: %s", problem)
            return None
        if budget_gb is not None and not (isinstance(budget_gb, int | float) and budget_gb >= 0):
            raise GPTClassifierError(
                f"finetune.cache_budget_gb={budget_gb!r} must be a number of GB >= 0, or null (automatic)"
            )
        budget = None if budget_gb is None else int(budget_gb * 1e9)
        return cls(classifier, start_block, budget_bytes=budget, spill_dir=spill_dir)

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
        """Forget every split and remove the files of those spilled to disk."""
        paths = [cached.path for cached in self.splits.values() if cached.path is not None]
        self.splits.clear()
        for path in paths:
            path.unlink(missing_ok=True)
            SPILLED.discard(path)
        if paths and self.spill_dir is not None and not any(self.spill_dir.iterdir()):
            self.spill_dir.rmdir()

    def _allocate(self, split: str, rows: int, device: torch.device) -> tuple[Tensor, Path | None] | None:
        """fp32 storage for `rows` states: on `device` within the budget, else host, else disk, else None."""
        width = self.classifier.model.cfg.emb_dim
        nbytes = rows * width * 4
        if self.budget_bytes is not None:
            in_memory = sum(c.nbytes for c in self.splits.values() if c.path is None)
            room, source = (
                self.budget_bytes - in_memory,
                f"finetune.cache_budget_gb={self.budget_bytes / 1e9:g}",
            )
        else:
            headroom = device_headroom(device)
            room, source = int(self.share * headroom.bytes), f"{self.share:.0%} of {headroom.source}"
        log.info("the %s cache will take %s; budget %s (%s)", split, _mb(nbytes), _mb(max(room, 0)), source)
        if nbytes <= room or rows == 0:
            return torch.empty(rows, width, device=device), None
        if device.type == "cuda":
            host = host_headroom()
            if nbytes <= self.share * host.bytes:
                log.info(
                    "the %s cache goes to pinned host memory (%s: %s)", split, host.source, _mb(host.bytes)
                )
                return torch.empty(rows, width, pin_memory=True), None
        if self.spill_dir is None:
            log.warning(
                "frozen-trunk cache off: %s of states exceed the budget and no spill folder is set",
                _mb(nbytes),
            )
            return None
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.spill_dir).free
        if nbytes > free - 2**30:  # leave a GiB for checkpoints and logs
            if not any(self.spill_dir.iterdir()):
                self.spill_dir.rmdir()
            log.warning(
                "frozen-trunk cache off: %s of states fit neither the memory budget nor the disk "
                "(%s free in %s); training runs the whole model",
                _mb(nbytes),
                _mb(free),
                self.spill_dir,
            )
            return None
        path = self.spill_dir / f"{split}-{os.getpid()}.f32"
        SPILLED.add(path)
        storage = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, width))
        log.info("the %s cache spills to %s (memory-mapped, read back per batch)", split, path)
        return torch.from_numpy(storage), path

    @torch.no_grad()
    def build(self, split: str, token_ids: Sequence[Sequence[int]]) -> bool:
        """Run the frozen blocks over every example of a split, as the uncached path would see it.

        Each example is seen padded to the training width (`max_length` padding) or unpadded; it is
        computed only up to what the tail reads, sorted by length and packed about `chunk_tokens`
        tokens at a time (`Packing`: no work on padding). False when the states fit nowhere.
        """
        started, started_cpu = time.perf_counter(), time.process_time()
        device = next(self.classifier.model.parameters()).device
        lengths, reads, views = self._views(token_ids)
        needed = [len(view) for view in views]
        # Without attention above (only the head learns), the read position alone is kept.
        single_position = (
            self.start_block == len(self.classifier.model.trf_blocks)
            and self.classifier.reading.pooling == "token"
        )
        stored = [1] * len(views) if single_position else needed
        order = sorted(range(len(views)), key=needed.__getitem__, reverse=True)
        # All states in one tensor, in length order: no heap fragmented by thousands of small tensors.
        allocated = self._allocate(split, sum(stored), device)
        if allocated is None:
            return False
        storage, path = allocated
        pass_started = time.perf_counter()
        self._fill(storage, path, views, order, split=split, reads=reads if single_position else None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the pass ends when its kernels do
        seconds = time.perf_counter() - pass_started
        states: list[Tensor] = [storage[:0]] * len(views)
        for i, state in zip(order, storage.split([stored[i] for i in order]), strict=True):
            states[i] = state
        read_pos = torch.zeros_like(reads) if single_position else reads
        cached = self.splits[split] = CachedSplit(states, read_pos, lengths, path)
        self.build_seconds += time.perf_counter() - started
        self.build_cpu_seconds += time.process_time() - started_cpu
        log.info(
            "cached the frozen blocks 0-%d for %d %s examples in %.1f s (%.0f tokens/s): "
            "%.1f MB of hidden states (%d positions)%s",
            self.start_block - 1,
            len(states),
            split,
            seconds,
            sum(needed) / max(seconds, 1e-9),
            cached.nbytes / 2**20,
            sum(stored),
            f" in {path}" if path else "",
        )
        return True

    def _views(self, token_ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, list[list[int]]]:
        """The examples' lengths, read positions, and the token ids the tail depends on: each example
        cut (or padded) to its needed length, as the uncached path would see it."""
        classifier = self.classifier
        lengths = torch.tensor([len(ids) for ids in token_ids])
        widths = (
            torch.full_like(lengths, classifier.max_length) if classifier.padding == "max_length" else lengths
        )
        reads = classifier.reading.read_positions(lengths, widths)
        needed = classifier.reading.needed_lengths(lengths, widths).tolist()
        pad = classifier.pad_token_id
        views = [list(ids[:n]) + [pad] * (n - len(ids)) for ids, n in zip(token_ids, needed, strict=True)]
        return lengths, reads, views

    def _fill(
        self,
        storage: Tensor,
        path: Path | None,
        views: list[list[int]],
        order: list[int],
        *,
        split: str,
        reads: Tensor | None,
    ) -> None:
        """Write the frozen blocks' states of `views`, in `order`, into `storage` (only the read
        positions `reads` when given); a failed pass removes its spill file."""
        model = self.classifier.model
        device = next(model.parameters()).device
        offset = 0
        try:
            chunks = list(token_chunks(order, [len(v) for v in views], self.chunk_tokens))
            for chunk in tqdm(chunks, desc=f"caching {split}", unit="chunk", leave=False, disable=None):
                input_ids, chunk_lengths = pad_batch([views[i] for i in chunk], self.classifier.pad_token_id)
                packing = Packing(chunk_lengths.to(device), input_ids.shape[1])
                rows = packing.pack(model.embed(input_ids.to(device)))
                rows = run_blocks(model.trf_blocks[: self.start_block], rows, packing)
                if reads is not None:
                    rows = packing.take(rows, reads[chunk].to(device))[:, 0]
                storage[offset : offset + len(rows)] = rows
                offset += len(rows)
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
                SPILLED.discard(path)
            raise
