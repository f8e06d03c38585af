"""Texts to token ids to padded batches: what training and prediction share (no Lightning here).

Every batch is a dict: `input_ids [B, T]` padded with `<|endoftext|>` (50256), `lengths [B]` (real
tokens per example, so a model can read the last real one) and, in training, `labels [B]` and
`index [B]` (the example's row in its split: the key of the frozen-trunk cache).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tiktoken
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gpt_classifier.data.token_ids import pad_ids
from gpt_classifier.data.tokenizer import PAD_TOKEN_ID, encode_bounded_batch


class TokenArrays(Sequence):
    """Many texts' token ids as one flat int32 array and offsets: 4 bytes a token where a Python list of
    ints takes ~36, so 50,000 reviews of 300 tokens need 60 MB, not 540. Item i is a read-only view."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat = np.asarray(flat, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.flat.flags.writeable = False

    @classmethod
    def from_lists(cls, token_ids: Sequence[Sequence[int]]) -> TokenArrays:
        lengths = [len(ids) for ids in token_ids]
        flat = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int32, count=sum(lengths))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]))

    @classmethod
    def concat(cls, parts: Sequence[TokenArrays]) -> TokenArrays:
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64))
        starts = np.cumsum([0] + [len(p.flat) for p in parts[:-1]])
        offsets = [parts[0].offsets[:1]] + [
            p.offsets[1:] + start for p, start in zip(parts, starts, strict=True)
        ]
        return cls(np.concatenate([p.flat for p in parts]), np.concatenate(offsets))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.flat[self.offsets[index] : self.offsets[index + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def truncate(self, max_length: int, side: str = "right") -> TokenArrays:
        """Each text cut to `max_length` tokens, keeping its beginning (`right`) or its end (`left`)."""
        starts, ends = self.offsets[:-1], self.offsets[1:]
        if side == "right":
            ends = np.minimum(ends, starts + max_length)
        else:
            starts = np.maximum(starts, ends - max_length)
        keep = np.repeat(starts - np.concatenate([[0], np.cumsum(ends - starts)[:-1]]), ends - starts)
        flat = self.flat[np.arange(len(keep)) + keep]
        return TokenArrays(flat, np.concatenate([[0], np.cumsum(ends - starts)]))


def encode_corpus(
    tokenizer: tiktoken.Encoding,
    texts: Sequence[str],
    *,
    chunk: int = 4096,
    desc: str = "tokenizing",
    max_length: int | None = None,
    side: str = "right",
) -> TokenArrays:
    """Token ids of many texts, encoded in batches (tiktoken's threads) with a progress bar, kept compact;
    each cut to its first (`side="right"`) or last `max_length` tokens, tokenizing only those."""
    parts = []
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False, disable=None) as bar:
        for start in range(0, len(texts), chunk):
            batch = encode_bounded_batch(tokenizer, list(texts[start : start + chunk]), max_length, side)
            parts.append(TokenArrays.from_lists(batch))
            bar.update(len(batch))
    return TokenArrays.concat(parts)


def pad_batch(
    token_ids: Sequence[Sequence[int]], pad_token_id: int = PAD_TOKEN_ID, width: int | None = None
) -> tuple[Tensor, Tensor]:
    """`input_ids [B, width or the longest]` padded at the end with `pad_token_id`, and `lengths [B]`."""
    input_ids, lengths = pad_ids(token_ids, pad_token_id, width)
    return torch.from_numpy(input_ids), torch.from_numpy(lengths)


class EncodedDataset(Dataset):
    """Token ids and integer labels of one split."""

    def __init__(self, token_ids: Sequence[Sequence[int]], labels: list[int]) -> None:
        self.token_ids = token_ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.token_ids[index], "label": self.labels[index], "index": index}

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.token_ids]


@dataclass
class PadCollate:
    """Pads a list of examples with `pad_token_id`, to `pad_to` tokens or to the batch's longest."""

    pad_token_id: int = PAD_TOKEN_ID
    pad_to: int | None = None

    def __call__(self, items: list[dict]) -> dict[str, Tensor]:
        input_ids, lengths = pad_batch([item["input_ids"] for item in items], self.pad_token_id, self.pad_to)
        return {
            "input_ids": input_ids,
            "lengths": lengths,
            "labels": torch.tensor([item["label"] for item in items]),
            "index": torch.tensor([item["index"] for item in items]),
        }


def encode_labels(label_lists: Sequence[Sequence[str]], names: Sequence[str]) -> list[str]:
    """Each text's labels as their indices joined by `|` (empty: no label), as the split files store them."""
    index = {name: i for i, name in enumerate(names)}
    return ["|".join(str(index[label]) for label in labels) for labels in label_lists]


def decode_labels(cells: Sequence[object], num_labels: int) -> list[list[float]]:
    """The split files' `|`-joined indices as multi-hot rows of `num_labels` 0/1 floats."""
    rows = []
    for cell in cells:
        row = [0.0] * num_labels
        text = "" if pd.isna(cell) else str(cell)
        for index in filter(None, text.split("|")):
            row[int(float(index))] = 1.0
        rows.append(row)
    return rows
