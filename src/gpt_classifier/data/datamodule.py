"""Token batches for any text-classification split: the generic `TextClassificationDataModule`.

It reads `train.csv` / `validation.csv` / `test.csv` (a text column and an integer label column)
from `data_dir`, tokenizes them once, and serves padded batches (`encoding.PadCollate`). Subclasses
write those files first: `sms.SpamDataModule` (the chapter) and `tabular.TabularDataModule` (yours).
Shuffling is a function of (seed, epoch), so a resumed run sees the same order; under DDP each
process takes its own share (torch's `DistributedSampler`) and evaluation counts every example once
(Lightning's `UnrepeatedDistributedSampler`). Its test loaders are every split, in `SPLITS` order:
the book's final evaluation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler

from gpt_classifier.atomic_files import replace_atomically
from gpt_classifier.data.encoding import (
    EncodedDataset,
    PadCollate,
    TokenArrays,
    decode_labels,
    encode_corpus,
)
from gpt_classifier.data.long_texts import LongTexts
from gpt_classifier.data.samplers import LengthGroupedBatchSampler, draw_seed
from gpt_classifier.data.tokenizer import PAD_TOKEN_ID, get_tokenizer
from gpt_classifier.data.windows import WindowCollate, WindowedDataset, long_text_dataset
from gpt_classifier.errors import GPTClassifierError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
Padding = Literal["max_length", "dynamic", "none"]


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    replace_atomically(path, lambda f: f.write(df.to_csv(index=None).encode()))


def check_batching(
    *, batch_size: int, max_length: int | str, context_length: int, padding: str, truncation_side: str
) -> None:
    """Refuse, in one line each, the batching options every data config shares."""
    if truncation_side not in ("right", "left"):
        raise GPTClassifierError(
            f"data.truncation_side={truncation_side!r} is unknown: use right (keep the beginning) "
            "or left (keep the end)"
        )
    if padding not in ("max_length", "dynamic", "none"):
        raise GPTClassifierError(f"data.padding={padding!r} is unknown: use max_length, dynamic or none")
    if isinstance(max_length, str) and max_length not in ("longest", "model"):
        raise GPTClassifierError(
            f"data.max_length={max_length!r} is unknown: use longest, model or a number of tokens"
        )
    if isinstance(max_length, int) and not 0 < max_length <= context_length:
        raise GPTClassifierError(
            f"data.max_length={max_length} must be between 1 and the context length {context_length}"
        )
    if batch_size < 1:
        raise GPTClassifierError(f"data.batch_size={batch_size} must be at least 1")


def several_labels(multi_label: bool, label_columns: Sequence[str] | None, *, readable: bool) -> bool:
    """Whether texts have several labels; one line where this data cannot say (only own files can)."""
    if label_columns or (multi_label and not readable):
        option = "data.label_columns" if label_columns else "data.multi_label=true"
        raise GPTClassifierError(
            f"{option} reads several labels from your own file: use data=csv data.path=<file>"
        )
    return bool(multi_label)


class TextClassificationDataModule(L.LightningDataModule):
    """Token batches from `train.csv`, `validation.csv` and `test.csv` in `data_dir`.

    `max_length`: `longest` (the longest training example, the book), `model` (the context
    length), or an int; longer texts are cut, keeping their beginning (`truncation_side` right, the
    book) or their end (left). `padding`: `max_length` (every batch padded to `max_length`, the
    book), `dynamic` (each batch to its own longest) or `none` (batches of one). Token ids are kept
    as compact arrays (`encoding.TokenArrays`).
    `positive_class`: the class name a decision threshold is about (null: the second of two).
    `long_texts`: `truncate` (above), `head_tail` (the first `head_tokens` and last `tail_tokens`) or
    `windows` (every `window_stride` tokens, at most `max_windows`, logits aggregated by
    `window_aggregate`): see `windows.LongTexts`.
    """

    reads_several_labels = False  # `multilabel.MultiLabelDataModule` does

    def __init__(
        self,
        data_dir: str | os.PathLike,
        class_names: Sequence[str],
        text_column: str = "Text",
        label_column: str = "Label",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int | str = "longest",
        context_length: int = 1024,
        padding: Padding = "max_length",
        group_by_length: bool = False,
        num_workers: int = 0,
        pad_token_id: int = PAD_TOKEN_ID,
        positive_class: str | None = None,
        truncation_side: Literal["right", "left"] = "right",
        long_texts: str = "truncate",
        window_stride: int | None = None,
        max_windows: int = 8,
        head_tokens: int | None = None,
        tail_tokens: int | None = None,
        window_aggregate: str = "mean",
        multi_label: bool = False,
        label_separator: str | None = None,
        label_columns: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        check_batching(
            batch_size=batch_size,
            max_length=max_length,
            context_length=context_length,
            padding=padding,
            truncation_side=truncation_side,
        )
        self.multi_label = several_labels(
            multi_label, label_columns, readable=self.reads_several_labels
        )  # labels: a 0/1 row per text (`encoding.decode_labels`)
        self.long_texts_settings = {
            "long_texts": long_texts,
            "window_stride": window_stride,
            "max_windows": max_windows,
            "head_tokens": head_tokens,
            "tail_tokens": tail_tokens,
            "window_aggregate": window_aggregate,
            "truncation_side": truncation_side,
        }
        LongTexts.from_settings({**self.long_texts_settings, "head_tokens": None}, context_length)
        self.data_dir = Path(data_dir)
        self.class_names = list(class_names)
        self.text_column = text_column
        self.label_column = label_column
        self.batch_size = 1 if padding == "none" else batch_size
        self.eval_batch_size = 1 if padding == "none" else eval_batch_size or batch_size
        self.max_length_option = max_length
        self.context_length = context_length
        self.padding = padding
        self.group_by_length = group_by_length
        self.num_workers = num_workers
        self.pad_token_id = pad_token_id
        self.positive_class = positive_class  # two classes: the one a decision threshold is about
        self.truncation_side = truncation_side
        self.datasets: dict[str, EncodedDataset | WindowedDataset] = {}
        self.max_length: int | None = None
        self.long_texts: LongTexts | None = None  # with max_length, once known (`setup`)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        started = time.perf_counter()
        tokenizer = get_tokenizer()
        frames = {split: self.read_split(split) for split in SPLITS}
        encoded = {
            split: encode_corpus(
                tokenizer,
                df[self.text_column].astype(str).tolist(),
                desc=f"tokenizing {split}",
                max_length=8 * self.context_length,  # bounded, yet long enough to log how long cut texts are
                side=self.truncation_side,
            )
            for split, df in frames.items()
        }
        if self.max_length_option == "longest":
            self.max_length = min(int(encoded["train"].lengths.max(initial=1)), self.context_length)
        elif self.max_length_option == "model":
            self.max_length = self.context_length
        else:
            self.max_length = int(self.max_length_option)
        self.long_texts = LongTexts.from_settings(self.long_texts_settings, self.max_length)
        for split, df in frames.items():
            self.datasets[split] = self._dataset(split, df, encoded[split])
        tokens = sum(len(d.token_ids.flat) for d in self.datasets.values())
        log.info(
            "read and tokenized %s texts (%s tokens kept) in %.1f s",
            f"{sum(map(len, self.datasets.values())):,}",
            f"{tokens:,}",
            time.perf_counter() - started,
        )

    def _dataset(self, split: str, df: pd.DataFrame, ids: TokenArrays) -> EncodedDataset | WindowedDataset:
        """One split's texts as the model reads them (cut, head and tail, or windows) with their labels."""
        labels = (
            decode_labels(df[self.label_column].tolist(), self.num_classes)
            if self.multi_label
            else df[self.label_column].astype(int).tolist()
        )
        if self.long_texts.mode != "truncate":
            return long_text_dataset(split, ids, labels, self.long_texts)
        cut = ids.lengths[ids.lengths > self.max_length]
        if len(cut):
            log.info(
                "%s: cut %d of %d texts (median length %d tokens) to %d tokens, keeping their %s",
                split,
                len(cut),
                len(ids),
                int(np.median(cut)),
                self.max_length,
                "beginning" if self.truncation_side == "right" else "end",
            )
        return EncodedDataset(ids.truncate(self.max_length, self.truncation_side), labels)

    def token_ids(self, split: str) -> TokenArrays:
        """Every example's token ids (with windows: every window's), in the split's order (what the
        frozen-trunk cache is built from; a windows batch's `index` are rows of it)."""
        return self.datasets[split].token_ids

    def read_split(self, split: str) -> pd.DataFrame:
        """The raw rows of one split's CSV, with its text and label columns checked."""
        path = self.data_dir / f"{split}.csv"
        if not path.is_file():
            raise GPTClassifierError(f"{path} not found: run prepare_data() or point data.data_dir at it")
        df = pd.read_csv(path)
        for column in (self.text_column, self.label_column):
            if column not in df.columns:
                raise GPTClassifierError(f"{path}: no column {column!r} (columns: {', '.join(df.columns)})")
        return df

    @property
    def collate(self) -> PadCollate:
        pad_to = self.max_length if self.padding == "max_length" else None
        windows = self.long_texts is not None and self.long_texts.mode == "windows"
        return (WindowCollate if windows else PadCollate)(self.pad_token_id, pad_to)

    def data_settings(self) -> dict:
        """What a model trained on this data needs to read texts as it did (saved in its checkpoint)."""
        assert self.long_texts is not None, "setup() first"
        return {
            "max_length": self.max_length,
            "padding": self.padding,
            "pad_token_id": self.pad_token_id,
            **self.long_texts.settings(),
            "multi_label": self.multi_label,
        }

    def processes(self) -> tuple[int, int]:
        """(rank, number of processes) of the trainer this data module serves; (0, 1) without one."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def _loader(self, split: str, train: bool) -> DataLoader:
        """Made by Lightning when it needs it, after DDP started: every process knows its rank."""
        dataset = self.datasets[split]
        batch_size = self.batch_size if train else self.eval_batch_size
        rank, world = self.processes()
        # The loader's own generator: making an epoch's iterator would otherwise draw from torch's global
        # one, which dropout uses, and a resumed run would then see other dropout masks.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        common = {"collate_fn": self.collate, "num_workers": self.num_workers, "generator": generator}
        if self.group_by_length and self.padding != "max_length":
            sampler = LengthGroupedBatchSampler(
                dataset.lengths, batch_size, shuffle=train, drop_last=train, rank=rank, world=world
            )
            return DataLoader(dataset, batch_sampler=sampler, **common)
        if train:  # a permutation of (seed, epoch); Lightning calls `set_epoch`
            sampler = DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=draw_seed()
            )
        else:  # a slice per process, no example repeated
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> list[DataLoader]:
        """Every split in full with the model to evaluate, as the book does at the end."""
        return [self._loader(split, train=False) for split in SPLITS]
