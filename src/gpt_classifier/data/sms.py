"""The chapter's data: the UCI SMS Spam Collection, downloaded, balanced and split 70/10/20 as in the book."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd

from gpt_classifier.data.datamodule import SPLITS
from gpt_classifier.data.download import fetch_verified
from gpt_classifier.data.public_split import PreparedDataModule

log = logging.getLogger(__name__)

SMS_URLS = (
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
)
SMS_SHA256 = "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3"
SMS_ZIP = "sms_spam_collection.zip"


def fetch_sms_zip(urls: Sequence[str], cache_dir: Path) -> Path:
    """The verified UCI zip: cached, else downloaded, else the copy shipped with the package."""
    fetched, _ = fetch_verified(urls, cache_dir / SMS_ZIP, SMS_SHA256)
    if fetched is not None:
        return fetched
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


class SpamDataModule(PreparedDataModule):
    """The UCI SMS Spam Collection, balanced and split 70/10/20 exactly as in chapter 6."""

    DATA_DIR = "data/sms_spam"
    URLS = SMS_URLS
    CLASS_NAMES = ("not spam", "spam")

    def stamp(self) -> dict[str, Any]:
        return {"source_sha256": SMS_SHA256, "seed": self.seed}

    def make_split(self) -> dict[str, pd.DataFrame]:
        return balance_and_split(read_sms_collection(fetch_sms_zip(self.urls, self.cache_dir)), self.seed)
