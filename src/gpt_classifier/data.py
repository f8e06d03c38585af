"""Data: the SMS Spam Collection (download, balance, split) and token batches for any CSV split.

`TextClassificationDataModule` turns `train.csv` / `validation.csv` / `test.csv` (a text column
and a label column) into padded token batches; `SpamDataModule` first writes those files from the
UCI archive exactly as chapter 6 does. Every batch is a dict: `input_ids [B, T]`, `lengths [B]`
(real tokens per example, so a model can read the last real one), `labels [B]` and `index [B]`
(the example's row in its split, the key of the frozen-trunk cache).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal

import lightning as L
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.files import replace_atomically
from gpt_classifier.samplers import EpochShuffleSampler, LengthGroupedBatchSampler, SequentialShardSampler
from gpt_classifier.tokenizer import PAD_TOKEN_ID, get_tokenizer

log = logging.getLogger(__name__)

SMS_URLS = (
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
)
SMS_SHA256 = "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3"
SMS_ZIP = "sms_spam_collection.zip"
SPLITS = ("train", "validation", "test")
Padding = Literal["max_length", "dynamic", "none"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPT_CLASSIFIER_CACHE", Path.home() / ".cache" / "gpt-classifier"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Stream `url` to `dest` with a progress bar; only a file with the right sha256 ever lands."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise GPTClassifierError(
                f"checksum mismatch for {url}: got sha256 {digest.hexdigest()}, expected {sha256}; "
                "the file was discarded"
            )
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return dest


def fetch_sms_zip(urls: Sequence[str], cache_dir: Path) -> Path:
    """The verified UCI zip: cached, else downloaded, else the copy shipped with the package."""
    dest = cache_dir / SMS_ZIP
    if dest.is_file() and sha256_of(dest) == SMS_SHA256:
        return dest
    for url in urls:
        try:
            return download(url, dest, SMS_SHA256)
        except (urllib.error.URLError, OSError, GPTClassifierError) as err:
            log.info("download from %s failed: %s", url, getattr(err, "reason", err))
    bundled = Path(str(files("gpt_classifier") / "assets" / SMS_ZIP))
    log.warning("SMS Spam Collection not reachable online; using the copy shipped with gpt-classifier")
    return bundled


def read_sms_collection(zip_path: Path) -> pd.DataFrame:
    """The `SMSSpamCollection` TSV inside the UCI zip, read with pandas defaults as the book does."""
    with zipfile.ZipFile(zip_path) as archive:
        raw = archive.read("SMSSpamCollection")
    return pd.read_csv(io.BytesIO(raw), sep="\t", header=None, names=["Label", "Text"])


def balance_and_split(df: pd.DataFrame, seed: int = 123) -> dict[str, pd.DataFrame]:
    """Chapter 6's recipe: undersample ham to the spam count, shuffle, cut 70/10/20."""
    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"].sample(len(spam), random_state=seed)
    balanced = pd.concat([ham, spam])
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    shuffled = balanced.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(shuffled) * 0.7)
    val_end = train_end + int(len(shuffled) * 0.1)
    parts = (shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:])
    return dict(zip(SPLITS, parts, strict=True))


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    replace_atomically(path, lambda f: f.write(df.to_csv(index=None).encode()))


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
        lengths = [len(item["input_ids"]) for item in items]
        width = self.pad_to or max(lengths)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, : lengths[row]] = torch.tensor(item["input_ids"], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "lengths": torch.tensor(lengths),
            "labels": torch.tensor([item["label"] for item in items]),
            "index": torch.tensor([item["index"] for item in items]),
        }


class TextClassificationDataModule(L.LightningDataModule):
    """Token batches from `train.csv`, `validation.csv` and `test.csv` in `data_dir`.

    `max_length`: `longest` (the longest training example, the book), `model` (the context
    length), or an int; longer texts are truncated. `padding`: `max_length` (every batch padded to
    `max_length`, the book), `dynamic` (each batch to its own longest) or `none` (batches of one).
    """

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
    ) -> None:
        super().__init__()
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
        self.datasets: dict[str, EncodedDataset] = {}
        self.max_length: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        tokenizer = get_tokenizer()
        frames = {split: self.read_split(split) for split in SPLITS}
        encoded = {
            split: tokenizer.encode_ordinary_batch(df[self.text_column].astype(str).tolist())
            for split, df in frames.items()
        }
        if self.max_length_option == "longest":
            self.max_length = min(max(map(len, encoded["train"])), self.context_length)
        elif self.max_length_option == "model":
            self.max_length = self.context_length
        else:
            self.max_length = int(self.max_length_option)
        for split, df in frames.items():
            ids = encoded[split]
            truncated = sum(len(x) > self.max_length for x in ids)
            if truncated:
                log.info("%s: truncated %d texts to %d tokens", split, truncated, self.max_length)
            labels = df[self.label_column].astype(int).tolist()
            self.datasets[split] = EncodedDataset([x[: self.max_length] for x in ids], labels)

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
        return PadCollate(self.pad_token_id, pad_to)

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        batch_size = self.batch_size if train else self.eval_batch_size
        # The loader's own generator: making an epoch's iterator would otherwise draw from torch's global
        # one, which dropout uses, and a resumed run would then see other dropout masks.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        common = {"collate_fn": self.collate, "num_workers": self.num_workers, "generator": generator}
        if self.group_by_length and self.padding != "max_length":
            sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, shuffle=train, drop_last=train)
            return DataLoader(dataset, batch_sampler=sampler, **common)
        sampler = EpochShuffleSampler(len(dataset)) if train else SequentialShardSampler(len(dataset))
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """The whole split in order, for final evaluation (train included, nothing dropped)."""
        return self._loader(split, train=False)


class SpamDataModule(TextClassificationDataModule):
    """The UCI SMS Spam Collection, balanced and split 70/10/20 exactly as in chapter 6."""

    def __init__(
        self,
        data_dir: str | os.PathLike = "data/sms_spam",
        urls: Sequence[str] = SMS_URLS,
        cache_dir: str | os.PathLike | None = None,
        seed: int = 123,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, class_names=["not spam", "spam"], **kwargs)
        self.urls = list(urls)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.seed = seed

    def prepare_data(self) -> None:
        stamp = {"source_sha256": SMS_SHA256, "seed": self.seed}
        stamp_file = self.data_dir / "split.json"
        if self._split_is_current(stamp_file, stamp):
            return
        df = read_sms_collection(fetch_sms_zip(self.urls, self.cache_dir))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        parts = balance_and_split(df, self.seed)
        for split, part in parts.items():
            write_csv_atomic(part, self.data_dir / f"{split}.csv")
        stamp["rows"] = {split: len(part) for split, part in parts.items()}
        stamp["sha256"] = {split: sha256_of(self.data_dir / f"{split}.csv") for split in SPLITS}
        stamp_file.write_text(json.dumps(stamp, indent=2))
        log.info(
            "wrote %s to %s",
            ", ".join(f"{s}.csv ({n} rows)" for s, n in stamp["rows"].items()),
            self.data_dir,
        )

    def _split_is_current(self, stamp_file: Path, stamp: dict) -> bool:
        """Reuse the CSVs only if they come from the same archive and seed and are unchanged."""
        try:
            saved = json.loads(stamp_file.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(saved, dict) or {k: saved.get(k) for k in stamp} != stamp:
            return False
        hashes = saved.get("sha256") or {}
        paths = {split: self.data_dir / f"{split}.csv" for split in SPLITS}
        return all(path.is_file() and sha256_of(path) == hashes.get(split) for split, path in paths.items())


class TabularDataModule(TextClassificationDataModule):
    """Your own labelled texts with any number of classes.

    Either one file (`path`), split by class into train/validation/test by `fractions` with `seed`,
    or your own three files (`train_path`, `val_path`, `test_path`). CSV, TSV, JSONL or Parquet;
    labels may be strings or integers. The classes, in order, are `class_names` when given, else
    the sorted labels found; they are saved with the split and in every checkpoint.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        text_column: str | int = "text",
        label_column: str | int = "label",
        header: bool = True,
        class_names: Sequence[str | int] | None = None,
        balance: bool = False,
        fractions: Sequence[float] = (0.7, 0.1, 0.2),
        seed: int = 123,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, class_names=[], **kwargs)
        own_files = (train_path, val_path, test_path)
        if (path is None) == all(p is None for p in own_files) or (path is None and None in own_files):
            raise GPTClassifierError(
                "set data.path=<file> to split one file, or all of data.train_path, data.val_path and "
                "data.test_path to use your own splits"
            )
        self.path = path
        self.split_paths = dict(zip(SPLITS, own_files, strict=True))
        self.source_columns = (text_column, label_column)
        self.header = header
        self.class_names_option = list(class_names) if class_names is not None else None
        self.balance = balance
        self.fractions = list(fractions)
        self.seed = seed

    def prepare_data(self) -> None:
        from gpt_classifier.tabular import (
            balance_classes,
            check_classes_in_train,
            class_order,
            read_table,
            stratified_split,
        )

        text_column, label_column = self.source_columns
        if self.path is not None:
            df = read_table(self.path, text_column, label_column, self.header)
            names = class_order(df["Label"].tolist(), self.class_names_option, str(self.path))
            if self.balance:
                df = balance_classes(df, self.seed)
            frames = dict(
                zip(SPLITS, stratified_split(df, self.fractions, self.seed, str(self.path)), strict=True)
            )
        else:
            frames = {
                s: read_table(p, text_column, label_column, self.header) for s, p in self.split_paths.items()
            }
            labels = [label for df in frames.values() for label in df["Label"]]
            names = class_order(labels, self.class_names_option, str(self.split_paths["train"]))
            check_classes_in_train(frames, str(self.split_paths["train"]))
            if self.balance:
                frames["train"] = balance_classes(frames["train"], self.seed)
        index = {name: i for i, name in enumerate(names)}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for split, df in frames.items():
            out = pd.DataFrame({"Label": df["Label"].map(index), "Text": df["Text"]})
            write_csv_atomic(out, self.data_dir / f"{split}.csv")
        classes = self.data_dir / "classes.json"
        classes.write_text(json.dumps([str(name) for name in names]))
        counts = ", ".join(f"{split} {len(df)}" for split, df in frames.items())
        log.info(
            "%d classes (%s); rows: %s; written to %s",
            len(names),
            ", ".join(map(str, names)),
            counts,
            self.data_dir,
        )

    def setup(self, stage: str | None = None) -> None:
        classes = self.data_dir / "classes.json"
        if not classes.is_file():
            raise GPTClassifierError(f"{classes} not found: call prepare_data() first")
        self.class_names = json.loads(classes.read_text())
        super().setup(stage)
