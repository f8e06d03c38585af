"""Texts to token ids to padded batches: what training and prediction share (no Lightning here).

Every batch is a dict: `input_ids [B, T]` padded with `<|endoftext|>` (50256), `lengths [B]` (real
tokens per example, so a model can read the last real one) and, in training, `labels [B]` and
`index [B]` (the example's row in its split: the key of the frozen-trunk cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tiktoken
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gpt_classifier.tokenizer import PAD_TOKEN_ID


def encode_texts(
    tokenizer: tiktoken.Encoding, texts: Sequence[str], max_length: int | None = None
) -> list[list[int]]:
    """Token ids of each text (special-token strings are plain text), cut to `max_length` if given."""
    return [ids[:max_length] for ids in tokenizer.encode_ordinary_batch(list(texts))]


def pad_batch(
    token_ids: Sequence[Sequence[int]], pad_token_id: int = PAD_TOKEN_ID, width: int | None = None
) -> tuple[Tensor, Tensor]:
    """`input_ids [B, width or the longest]` padded at the end with `pad_token_id`, and `lengths [B]`."""
    lengths = [len(ids) for ids in token_ids]
    input_ids = torch.full((len(token_ids), width or max(lengths)), pad_token_id, dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : lengths[row]] = torch.as_tensor(ids, dtype=torch.long)
    return input_ids, torch.tensor(lengths)


class EncodedDataset(Dataset):
    """Token ids and integer labels of one split."""

    def __init__(self, token_ids: list[list[int]], labels: list[int]) -> None:
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
