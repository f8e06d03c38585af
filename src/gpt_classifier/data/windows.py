"""Training on long texts read as windows: a split's texts as windows (rows), batched per text, and the
window logits aggregated per text (`data.long_texts=windows`; the reading rule is `long_texts.py`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gpt_classifier.data.encoding import EncodedDataset, PadCollate, TokenArrays
from gpt_classifier.data.long_texts import Aggregate, LongTexts

log = logging.getLogger(__name__)


def aggregate_logits(logits: Tensor, text_of: Tensor, texts: int, aggregate: Aggregate) -> Tensor:
    """Text logits `[texts, classes]` from window logits `[windows, classes]`, `text_of` each window's
    text: the mean or the max over its windows (one window: its logits, unchanged)."""
    index = text_of.to(logits.device)[:, None].expand_as(logits)
    out = torch.zeros(texts, logits.shape[1], dtype=logits.dtype, device=logits.device)
    reduce = "mean" if aggregate == "mean" else "amax"
    return out.scatter_reduce(0, index, logits, reduce=reduce, include_self=False)


class WindowedDataset(Dataset):
    """One split as texts of several windows: item i is text i's windows (rows of `windows`), its label
    and its windows' rows (the keys of the frozen-trunk cache, which stores windows as rows)."""

    def __init__(self, windows: TokenArrays, first_window: np.ndarray, labels: list[int]) -> None:
        self.token_ids = windows
        self.first_window = first_window  # [texts + 1]: text i's windows are rows first[i]..first[i+1]-1
        self.labels = labels

    @classmethod
    def from_texts(cls, token_ids: Sequence[Sequence[int]], labels: list[int], long_texts: LongTexts):
        per_text = [long_texts.sequences(ids) for ids in token_ids]
        counts = np.array([len(w) for w in per_text], dtype=np.int64)
        windows = TokenArrays.from_lists([w for text in per_text for w in text])
        return cls(windows, np.concatenate([[0], np.cumsum(counts)]), labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        rows = range(int(self.first_window[index]), int(self.first_window[index + 1]))
        return {
            "windows": [self.token_ids[row] for row in rows],
            "label": self.labels[index],
            "index": list(rows),
        }

    @property
    def lengths(self) -> list[int]:
        """Tokens read per text, all windows together (what length-grouped batching sorts by)."""
        cumulative = np.concatenate([[0], np.cumsum(self.token_ids.lengths)])
        return (cumulative[self.first_window[1:]] - cumulative[self.first_window[:-1]]).tolist()

    @property
    def window_counts(self) -> np.ndarray:
        return np.diff(self.first_window)


class WindowCollate(PadCollate):
    """Pads a list of texts' windows as rows: `input_ids [windows, T]`, `lengths`, `index` (window rows),
    `text_of [windows]` (each window's text in the batch) and `labels [texts]`."""

    def __call__(self, items: list[dict]) -> dict[str, Tensor]:
        rows = [{"input_ids": w, "label": 0, "index": 0} for item in items for w in item["windows"]]
        batch = super().__call__(rows)
        counts = [len(item["windows"]) for item in items]
        batch["text_of"] = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts))
        batch["index"] = torch.tensor([row for item in items for row in item["index"]])
        batch["labels"] = torch.tensor([item["label"] for item in items])
        return batch


def long_text_dataset(
    split: str, ids: TokenArrays, labels: list, long_texts: LongTexts
) -> EncodedDataset | WindowedDataset:
    """A split read by `head_tail` (one sequence a text) or `windows` (several), logged."""
    max_length = long_texts.max_length
    if long_texts.mode == "head_tail":
        head, tail = long_texts.head_tail
        log.info(
            "%s: %d of %d texts longer than %d tokens keep their first %d and last %d tokens",
            *(split, int((ids.lengths > max_length).sum()), len(ids), max_length, head, tail),
        )
        return EncodedDataset(TokenArrays.from_lists([long_texts.sequences(t)[0] for t in ids]), labels)
    dataset = WindowedDataset.from_texts(ids, labels, long_texts)
    counts = dataset.window_counts
    log.info(
        "%s: %d texts read as %d windows of up to %d tokens every %d (at most %d a text, %d texts "
        "capped; %s of logits per text)",
        *(split, len(ids), int(counts.sum()), max_length, long_texts.window_stride),
        *(long_texts.max_windows, int((counts == long_texts.max_windows).sum()), long_texts.aggregate),
    )
    return dataset
