"""The book's next step (ch06/03_bonus_imdb-classification): 50,000 IMDb reviews, positive or negative.

The Large Movie Review Dataset archive (Maas et al., 2011) is downloaded once (checksummed, into the
cache folder) and split as the book's `download_prepare_dataset.py` does: the labelled reviews read
in the order test/pos, test/neg, train/pos, train/neg (each folder's files sorted by name; pos = 1,
neg = 0), shuffled with seed 123, shuffled again with seed 123, and cut into 35,000 / 5,000 / the
rest (10,000). The archive is read as a stream: nothing is extracted to disk.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from gpt_classifier.data.datamodule import SPLITS
from gpt_classifier.data.download import fetch_verified
from gpt_classifier.data.public_split import PreparedDataModule
from gpt_classifier.errors import GPTClassifierError

log = logging.getLogger(__name__)

IMDB_URLS = ("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",)
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
BOOK_SIZES = (35_000, 5_000, 10_000)
READ_ORDER = (("test", "pos"), ("test", "neg"), ("train", "pos"), ("train", "neg"))
LABELS = {"pos": 1, "neg": 0}


def fetch_imdb_archive(urls: Sequence[str], cache_dir: Path, sha256: str = IMDB_SHA256) -> Path:
    """The verified archive: cached, else downloaded from the first of `urls` that answers."""
    fetched, failures = fetch_verified(urls, cache_dir / IMDB_ARCHIVE, sha256)
    if fetched is not None:
        return fetched
    raise GPTClassifierError(
        f"the IMDb archive could not be downloaded ({'; '.join(failures) or 'no data.urls'}): "
        f"when offline, copy {IMDB_ARCHIVE} into {cache_dir} (or set data.cache_dir)"
    )


def read_imdb_archive(path: Path) -> pd.DataFrame:
    """The 50,000 labelled reviews as `Text`, `Label`, in the book's reading order."""
    texts: dict[tuple[str, str], dict[str, str]] = {key: {} for key in READ_ORDER}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in tqdm(archive, desc="reading reviews", unit="file", leave=False, disable=None):
                parts = Path(member.name).parts  # aclImdb/<subset>/<label>/<id>_<rating>.txt
                if not member.isfile() or len(parts) != 4 or (parts[1], parts[2]) not in texts:
                    continue
                text = archive.extractfile(member).read().decode("utf-8")
                # read as the book's open(..., "r") does: universal newlines
                texts[parts[1], parts[2]][parts[3]] = text.replace("\r\n", "\n").replace("\r", "\n")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise GPTClassifierError(
            f"{path} is not a readable .tar.gz ({err}): delete it to download again"
        ) from None
    empty = [f"aclImdb/{subset}/{label}" for (subset, label), files in texts.items() if not files]
    if empty:
        raise GPTClassifierError(f"{path}: no reviews in {', '.join(empty)}: is it aclImdb_v1.tar.gz?")
    rows = [
        (files[name], LABELS[label])
        for (subset, label), files in texts.items()
        for name in sorted(files)  # as sorted(os.listdir(...)) orders them
    ]
    return pd.DataFrame(rows, columns=["Text", "Label"])


def book_split(
    df: pd.DataFrame, sizes: Sequence[int] = BOOK_SIZES, seed: int = 123
) -> dict[str, pd.DataFrame]:
    """Shuffle twice with `seed` (the book's script shuffles when loading and again when cutting), then
    the first sizes[0] rows train, the next sizes[1] validation, the rest test (sizes[2], if given,
    only documents it)."""
    train_end, val_end = sizes[0], sizes[0] + sizes[1]
    if len(df) <= val_end:
        raise GPTClassifierError(
            f"data.sizes={list(sizes)} leaves no test reviews of the {len(df)} in the archive: "
            "lower the train and validation sizes"
        )
    shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    shuffled = shuffled.sample(frac=1, random_state=seed).reset_index(drop=True)
    parts = (shuffled.iloc[:train_end], shuffled.iloc[train_end:val_end], shuffled.iloc[val_end:])
    return dict(zip(SPLITS, parts, strict=True))


class ImdbDataModule(PreparedDataModule):
    """The IMDb Large Movie Review Dataset, split 35,000 / 5,000 / 10,000 as in the book's bonus."""

    DATA_DIR = "data/imdb"
    URLS = IMDB_URLS
    CLASS_NAMES = ("negative", "positive")

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        sha256: str = IMDB_SHA256,
        sizes: Sequence[int] = BOOK_SIZES,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("max_length", 256)  # the book's IMDb setting
        super().__init__(data_dir, **kwargs)
        if len(sizes) not in (2, 3) or any(int(n) < 1 for n in sizes):
            raise GPTClassifierError(
                f"data.sizes={list(sizes)} must be the train, validation (and test) sizes, "
                "e.g. [35000, 5000, 10000]"
            )
        self.sha256 = sha256
        self.sizes = [int(n) for n in sizes]

    def stamp(self) -> dict[str, Any]:
        return {"source_sha256": self.sha256, "seed": self.seed, "sizes": self.sizes}

    def make_split(self) -> dict[str, pd.DataFrame]:
        df = read_imdb_archive(fetch_imdb_archive(self.urls, self.cache_dir, self.sha256))
        return book_split(df, self.sizes, self.seed)
