"""Training on texts longer than `data.max_length`: windows and head_tail read evidence truncation cannot.

The synthetic task: 40 filler words of an 8-word vocabulary, and one word, `good` or `bad`, that
decides the label, placed where the first 16 tokens never reach it. The tiny model learns it in
seconds when it reads the whole text (`windows`) or its end (`head_tail`, evidence near the end);
truncated to its first 16 tokens it stays near chance.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
from helpers import TINY_MODEL, adamw, quiet_trainer

from gpt_classifier.data.datamodule import TextClassificationDataModule
from gpt_classifier.training.lightning_module import GPTClassifier

SIZES = {"train": 160, "validation": 40, "test": 80}
FILLER = ["the", "a", "of", "and", "to", "in", "it", "is"]


def write_keyword_task(
    folder: Path, *, length: int = 40, evidence: range = range(16, 40), seed: int = 0
) -> Path:
    """train/validation/test.csv: label 1 has `good`, label 0 `bad`, at a position drawn from `evidence`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in SIZES.items():
        rows = []
        for i in range(count):
            words = [rng.choice(FILLER) for _ in range(length)]
            words[rng.choice(evidence)] = "good" if i % 2 else "bad"
            rows.append({"Text": " ".join(words), "Label": i % 2})
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
    return folder


def fit(folder: Path, long_texts: str, *, epochs: int = 4, cache_frozen="auto", **data) -> GPTClassifier:
    """The tiny model (last block trained, frozen-trunk cache when possible), fitted and evaluated."""
    L.seed_everything(0)
    dm = TextClassificationDataModule(
        folder, ["bad", "good"], max_length=16, long_texts=long_texts, eval_batch_size=64, **data
    )
    dm.setup()
    module = GPTClassifier(
        TINY_MODEL,
        dm.class_names,
        finetune={"policy": "last_block", "cache_frozen": cache_frozen},
        data=dm.data_settings(),
        optimizer=adamw(2e-3),
    )
    trainer = quiet_trainer(max_epochs=epochs)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    return module


@pytest.fixture(scope="module")
def past_first_window(tmp_path_factory):
    return write_keyword_task(tmp_path_factory.mktemp("past_first_window"))


def test_windows_learn_what_truncation_cannot_see(past_first_window):
    truncated = fit(past_first_window, "truncate")
    windowed = fit(past_first_window, "windows", window_stride=16)
    assert truncated.final_metrics["test_acc"] <= 0.65  # 80 texts: chance is 0.5 +- 0.06
    assert windowed.final_metrics["test_acc"] >= 0.8
    assert windowed.final_metrics["val_acc"] >= 0.75


def test_head_tail_reads_the_end(tmp_path):
    folder = write_keyword_task(tmp_path, evidence=range(32, 40))
    assert fit(folder, "head_tail", head_tokens=4).final_metrics["test_acc"] >= 0.8


def test_windows_metrics_and_cache_are_per_text(past_first_window):
    """One probability row, one confusion count per text; the cache holds one row per window."""
    module = fit(past_first_window, "windows", epochs=1, window_stride=8, max_windows=3)
    probs, labels = module.test_outputs
    assert probs.shape == (SIZES["test"], 2) and labels.tolist() == [i % 2 for i in range(SIZES["test"])]
    assert int(module.confusion.compute().sum()) == SIZES["test"]
    assert sum(module.test_report[name]["support"] for name in ("bad", "good")) == SIZES["test"]
    # 40 one-token words: windows start at 0, 8, 16, 24 (ends at 40); at most 3, the first ones
    assert module.classifier.long_texts.window_starts(40) == [0, 8, 16]


def test_the_cache_gives_the_same_windowed_training(past_first_window):
    cached = fit(past_first_window, "windows", epochs=2, window_stride=16, cache_frozen=True)
    uncached = fit(past_first_window, "windows", epochs=2, window_stride=16, cache_frozen=False)
    for key, value in cached.final_metrics.items():
        assert value == pytest.approx(uncached.final_metrics[key], abs=1e-4), key
