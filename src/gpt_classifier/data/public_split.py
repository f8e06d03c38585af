"""Public datasets prepared once: downloaded (verified, cached), split by a fixed recipe, and reused.

`PreparedDataModule` is the base of `sms.SpamDataModule` (the chapter) and `imdb.ImdbDataModule` (the
book's IMDb bonus): `prepare_data` writes `train/validation/test.csv` into `data_dir` with a stamp
(`split.json`: what the split depends on, and the files' sha256), and reuses them while the stamp
matches and the files are unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.data.datamodule import SPLITS, TextClassificationDataModule, write_csv_atomic
from gpt_classifier.data.download import default_cache_dir, sha256_of

log = logging.getLogger(__name__)


def split_is_current(data_dir: Path, stamp: dict) -> bool:
    """True if `data_dir/split.json` says the split CSVs come from `stamp` (source, seed, ...) and they
    are unchanged since (their sha256): then a prepared split is reused, not rebuilt."""
    try:
        saved = json.loads((data_dir / "split.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or {k: saved.get(k) for k in stamp} != stamp:
        return False
    hashes = saved.get("sha256") or {}
    paths = {split: data_dir / f"{split}.csv" for split in SPLITS}
    return all(path.is_file() and sha256_of(path) == hashes.get(split) for split, path in paths.items())


def write_split(parts: dict[str, pd.DataFrame], data_dir: Path, stamp: dict) -> None:
    """The three split CSVs, then `split.json`: `stamp`, the row counts and the files' sha256."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, part in parts.items():
        write_csv_atomic(part, data_dir / f"{split}.csv")
    rows = {split: len(part) for split, part in parts.items()}
    sha256 = {split: sha256_of(data_dir / f"{split}.csv") for split in SPLITS}
    write_json_atomic({**stamp, "rows": rows, "sha256": sha256}, data_dir / "split.json")
    log.info("wrote %s to %s", ", ".join(f"{s}.csv ({n} rows)" for s, n in rows.items()), data_dir)


class PreparedDataModule(TextClassificationDataModule):
    """A dataset whose three splits are made from a download by `make_split`; subclasses set the class
    attributes and say what the split depends on (`stamp`)."""

    DATA_DIR: str
    URLS: Sequence[str]
    CLASS_NAMES: Sequence[str]

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        urls: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        seed: int = 123,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir or self.DATA_DIR, class_names=list(self.CLASS_NAMES), **kwargs)
        self.urls = list(self.URLS if urls is None else urls)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.seed = seed

    def stamp(self) -> dict[str, Any]:
        """What the split depends on: the source's sha256, the seed, the recipe's settings."""
        raise NotImplementedError

    def make_split(self) -> dict[str, pd.DataFrame]:
        """The three splits (columns `Label`, `Text`), from the (downloaded) source."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        stamp = self.stamp()
        if not split_is_current(self.data_dir, stamp):
            write_split(self.make_split(), self.data_dir, stamp)
