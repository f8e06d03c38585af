"""`data.long_texts`: bounded tokenization, the window rule, head and tail, aggregation, batches."""

import random
import time

import numpy as np
import pandas as pd
import pytest
import torch

from gpt_classifier.data.datamodule import TextClassificationDataModule
from gpt_classifier.data.long_texts import (
    LongTexts,
    aggregate_rows,
    bounded_prefix_tokens,
    bounded_suffix_tokens,
    char_budget,
)
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.data.windows import aggregate_logits
from gpt_classifier.errors import GPTClassifierError

PIECES = ["hello", "  ", " ", "\n\n", "world,", "it's", "123", "  x", "--", "Ünïcode", "\t", "'ll", "!?"]


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Texts mixing words, runs of spaces, newlines, digits, punctuation and contractions."""
    rng = random.Random(seed)
    return [
        "".join(rng.choice(PIECES) + rng.choice(["", " "]) for _ in range(rng.randint(0, 3000)))
        for _ in range(count)
    ]


@pytest.mark.parametrize("count", [1, 37, 600, 5000])
def test_bounded_tokens_equal_the_whole_texts_first_and_last(count):
    tokenizer = get_tokenizer()
    for text in random_texts(60):
        full = tokenizer.encode_ordinary(text)
        assert bounded_prefix_tokens(tokenizer, text, count) == full[:count]
        assert bounded_suffix_tokens(tokenizer, text, count) == full[max(len(full) - count, 0) :]


@pytest.mark.parametrize("word", [" absolutely", " hello", "x"])
def test_a_token_cut_by_a_prefix_is_never_kept(word):
    """Counts around where the first 4,096-character prefix ends inside a word: that word comes whole."""
    tokenizer = get_tokenizer()
    text = word * 3000
    full = tokenizer.encode_ordinary(text)
    around = 4096 // len(word)
    for count in range(around - 3, around + 4):
        assert bounded_prefix_tokens(tokenizer, text, count) == full[:count]
        assert bounded_suffix_tokens(tokenizer, text, count) == full[-count:]


def test_a_huge_text_is_tokenized_only_as_far_as_the_windows_read(monkeypatch):
    tokenizer = get_tokenizer()
    reading = LongTexts(mode="windows", max_length=64, stride=32, max_windows=4)
    seen: list[int] = []
    encode = tokenizer.encode_ordinary
    monkeypatch.setattr(tokenizer, "encode_ordinary", lambda text: seen.append(len(text)) or encode(text))
    text = "word " * 200_000  # 1 MB
    windows = reading.encode(tokenizer, text)
    assert [len(w) for w in windows] == [64] * 4
    assert [list(w) for w in windows] == [encode(text[:2000])[i * 32 : i * 32 + 64] for i in range(4)]
    assert max(seen) <= char_budget(reading.tokens_read + 1) < 10_000


@pytest.mark.parametrize("text", ["x" * 1_000_000, " " * 999_999 + "a", "ab " * 333_333])
@pytest.mark.parametrize("mode", ["truncate", "head_tail", "windows"])
def test_one_megabyte_texts_cost_bounded_work(text, mode, monkeypatch):
    """Whatever the text, tiktoken sees at most `char_budget` characters at once (a million spaces
    whole make it panic); the wall-clock bound is loose: the machine is shared."""
    reading = LongTexts(mode=mode, max_length=1024, max_windows=8)
    tokenizer = get_tokenizer()
    seen: list[int] = []
    encode = tokenizer.encode_ordinary
    monkeypatch.setattr(tokenizer, "encode_ordinary", lambda part: seen.append(len(part)) or encode(part))
    started = time.perf_counter()
    sequences = reading.encode(tokenizer, text)
    assert time.perf_counter() - started < 3.0
    assert max(seen) <= char_budget(reading.tokens_read + 1) < len(text) / 4
    assert 1 <= len(sequences) <= 8 and all(0 < len(s) <= 1024 for s in sequences)


def test_the_window_rule():
    reading = LongTexts(mode="windows", max_length=10, stride=4, max_windows=3)
    assert reading.window_starts(10) == [0]  # fits: one window
    assert reading.window_starts(3) == [0]
    assert reading.window_starts(11) == [0, 1]  # the last window ends at the text's end
    assert reading.window_starts(18) == [0, 4, 8]  # exactly max_windows
    assert reading.window_starts(19) == [0, 4, 8]  # more: the first max_windows
    assert reading.tokens_read == 18
    windows = reading.sequences(list(range(14)))
    assert [list(w) for w in windows] == [list(range(0, 10)), list(range(4, 14))]
    assert LongTexts(mode="windows", max_length=10).window_stride == 5


def test_head_tail_keeps_both_ends():
    reading = LongTexts(mode="head_tail", max_length=6, head_tokens=2)
    assert reading.head_tail == (2, 4)
    assert reading.sequences(list(range(20))) == [[0, 1, 16, 17, 18, 19]]
    assert reading.sequences(list(range(6))) == [list(range(6))]
    assert LongTexts(mode="head_tail", max_length=8).head_tail == (2, 6)
    tokenizer = get_tokenizer()
    text = random_texts(1, seed=3)[0]
    full = tokenizer.encode_ordinary(text)
    assert reading.encode(tokenizer, text) == [full[:2] + full[-4:]]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "chunks"}, r"data.long_texts='chunks' is unknown: use truncate, head_tail or windows"),
        ({"mode": "windows", "stride": 0}, r"data.window_stride=0 must be between 1 and data.max_length=8"),
        ({"mode": "windows", "stride": 9}, r"data.window_stride=9 must be between 1 and data.max_length=8"),
        ({"mode": "windows", "max_windows": 0}, r"data.max_windows=0 must be at least 1"),
        ({"mode": "head_tail", "head_tokens": 5, "tail_tokens": 4}, r"add up to data.max_length=8"),
        ({"mode": "head_tail", "head_tokens": 9}, r"must be >= 0"),
        ({"aggregate": "median"}, r"data.window_aggregate='median' is unknown: use mean or max"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(GPTClassifierError, match=message):
        LongTexts(max_length=8, **settings)
    # the edges are accepted
    LongTexts(mode="windows", max_length=8, stride=8, max_windows=1)
    LongTexts(mode="head_tail", max_length=8, head_tokens=0)


@pytest.mark.parametrize(
    ("aggregate", "expected"), [("mean", [[2.0, 0.0], [5.0, 1.0]]), ("max", [[3.0, 1.0], [5.0, 1.0]])]
)
def test_text_logits_aggregate_their_windows(aggregate, expected):
    """Training's torch aggregation and prediction's numpy one give the same text logits."""
    logits = torch.tensor([[1.0, -1.0], [3.0, 1.0], [5.0, 1.0]])
    assert aggregate_logits(logits, torch.tensor([0, 0, 1]), 2, aggregate).tolist() == expected
    assert aggregate_rows(logits.numpy(), np.array([0, 0, 1]), 2, aggregate).tolist() == expected


@pytest.fixture
def long_split(tmp_path):
    """Texts of 5 to 60 one-token words."""
    for split, n in {"train": 12, "validation": 4, "test": 4}.items():
        texts = [" ".join(["w"] * (5 + 5 * i)) for i in range(n)]
        pd.DataFrame({"Text": texts, "Label": [i % 2 for i in range(n)]}).to_csv(
            tmp_path / f"{split}.csv", index=False
        )
    return tmp_path


def test_windows_batches_are_texts_of_several_windows(long_split):
    dm = TextClassificationDataModule(
        long_split, ["a", "b"], max_length=16, long_texts="windows", window_stride=8, max_windows=5
    )
    dm.setup()
    dataset = dm.datasets["train"]
    tokenizer = get_tokenizer()
    texts = pd.read_csv(long_split / "train.csv")["Text"]
    for i, text in enumerate(texts):
        expected = dm.long_texts.sequences(tokenizer.encode_ordinary(text))
        assert [w.tolist() for w in dataset[i]["windows"]] == [list(w) for w in expected]
    assert dataset.window_counts.max() == 5 and dataset.window_counts.min() == 1
    assert len(dm.token_ids("train")) == dataset.window_counts.sum()  # the cache's rows are windows
    batch = dm.collate([dataset[0], dataset[11]])
    assert batch["labels"].tolist() == [0, 1]
    assert batch["input_ids"].shape == (1 + 5, 16)
    assert batch["text_of"].tolist() == [0, 1, 1, 1, 1, 1]
    assert batch["index"].tolist() == [0, *range(len(dm.token_ids("train")) - 5, len(dm.token_ids("train")))]
    assert dm.data_settings()["long_texts"] == "windows"


def test_head_tail_data_keeps_both_ends(long_split):
    dm = TextClassificationDataModule(long_split, ["a", "b"], max_length=8, long_texts="head_tail")
    dm.setup()
    ids = get_tokenizer().encode_ordinary(pd.read_csv(long_split / "train.csv")["Text"][5])
    assert dm.token_ids("train")[5].tolist() == ids[:2] + ids[-6:]


def test_truncate_stays_the_default(long_split):
    dm = TextClassificationDataModule(long_split, ["a", "b"], max_length=8)
    dm.setup()
    assert dm.long_texts.mode == "truncate" and "text_of" not in next(iter(dm.train_dataloader()))
