"""Long texts and large files: truncation side, compact token arrays, and the baseline on the same split."""

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, cli_env

from gpt_classifier.data.datamodule import TextClassificationDataModule
from gpt_classifier.data.encoding import TokenArrays, encode_corpus
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.errors import GPTClassifierError


@pytest.fixture
def long_split(tmp_path):
    """Texts "start ... end" of 5 to 40 words: with max_length 12, the long ones are cut."""
    for split, n in {"train": 12, "validation": 4, "test": 4}.items():
        texts = [" ".join(["start", *[f"w{i}"] * (5 + 3 * i), "end"]) for i in range(n)]
        pd.DataFrame({"Text": texts, "Label": [i % 2 for i in range(n)]}).to_csv(
            tmp_path / f"{split}.csv", index=False
        )
    return tmp_path


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_side_keeps_the_beginning_or_the_end(long_split, side, caplog):
    caplog.set_level(logging.INFO, logger="gpt_classifier.data.datamodule")
    dm = TextClassificationDataModule(long_split, ["a", "b"], max_length=12, truncation_side=side)
    dm.setup()
    tokenizer = get_tokenizer()
    texts = pd.read_csv(long_split / "train.csv")["Text"]
    full = [tokenizer.encode_ordinary(t) for t in texts]
    for ids, kept in zip(full, dm.token_ids("train"), strict=True):
        assert kept.tolist() == (ids[:12] if side == "right" else ids[-12:])
    cut = [len(ids) for ids in full if len(ids) > 12]
    keeping = "beginning" if side == "right" else "end"
    expected = f"train: cut {len(cut)} of 12 texts (median length {int(np.median(cut))} tokens) to 12 tokens"
    assert any(r.getMessage() == f"{expected}, keeping their {keeping}" for r in caplog.records)
    assert any("read and tokenized 20 texts" in r.getMessage() for r in caplog.records)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 12)


def test_unknown_truncation_side(long_split):
    with pytest.raises(GPTClassifierError, match=r"data.truncation_side='middle' is unknown: use right"):
        TextClassificationDataModule(long_split, ["a", "b"], truncation_side="middle")


def test_token_arrays_are_compact_and_exact():
    tokenizer = get_tokenizer()
    texts = [f"text number {i} " * (i % 7) for i in range(1000)]
    arrays = encode_corpus(tokenizer, texts, chunk=128)
    assert [a.tolist() for a in arrays] == tokenizer.encode_ordinary_batch(texts)
    assert arrays.flat.dtype == np.int32 and arrays.flat.nbytes == 4 * sum(map(len, arrays))
    assert arrays.lengths.tolist() == [len(a) for a in arrays] and len(arrays) == 1000
    cut = arrays.truncate(3, "left")
    assert [a.tolist() for a in cut] == [ids[-3:] for ids in tokenizer.encode_ordinary_batch(texts)]
    assert len(TokenArrays.from_lists([])) == 0


def run_baseline(tmp_path, *overrides):
    command = [
        sys.executable,
        str(ROOT / "bench" / "baseline.py"),
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    ]
    done = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_baseline_on_the_sms_split_and_a_csv(tmp_path, sms_split_dir):
    (tmp_path / "sms").mkdir()
    done, metrics = run_baseline(tmp_path / "sms", "data=sms_spam", f"data.data_dir={sms_split_dir}")
    keys = {"train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss"}
    assert keys <= metrics.keys()
    assert metrics["test_acc"] > 0.9  # bag of words separates spam well (the README's figure: 95.67 %)
    assert "test" in done.stdout and "accuracy" in done.stdout
    rows = [("great film, loved it", "pos"), ("awful, boring plot", "neg"), ("loved the acting", "pos")]
    csv = tmp_path / "reviews.csv"
    pd.DataFrame([{"text": f"{t} {i}", "label": y} for i in range(20) for t, y in rows]).to_csv(
        csv, index=False
    )
    (tmp_path / "csv").mkdir()
    _, metrics = run_baseline(tmp_path / "csv", "data=csv", f"data.path={csv}")
    assert keys <= metrics.keys() and metrics["test_acc"] == 1.0
