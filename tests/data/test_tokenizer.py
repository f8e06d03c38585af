"""The offline GPT-2 tokenizer gives GPT-2's ids, round-trips text and never opens a socket."""

import json
import os
import subprocess
import sys
import textwrap
import time
from importlib.resources import files

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from gpt_classifier.data.encoding import encode_corpus
from gpt_classifier.data.long_texts import LongTexts
from gpt_classifier.data.tokenizer import (
    ENDOFTEXT,
    PAD_TOKEN_ID,
    encode,
    encode_bounded,
    encode_bounded_batch,
    get_tokenizer,
)

BOOK_TEXT = "Hello, do you like tea? <|endoftext|>"
BOOK_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256]

# GPT-2 ids of varied text, checked against the independent Rust BPE of Hugging Face `tokenizers`
# (see `reference_tokenizer`) built from the same encoder.json / vocab.bpe.
# fmt: off
KNOWN_IDS = {
    "héllo wörld 😀 日本語": [
        71, 2634, 18798, 266, 30570, 335, 30325, 222, 10545, 245, 98, 17312, 105, 45739, 252,
    ],
    "a   b\t\tc\n\n  d": [64, 220, 220, 275, 197, 197, 66, 628, 220, 288],
    "3.14159 and 1,000,000": [18, 13, 1415, 19707, 290, 352, 11, 830, 11, 830],
    "I'm sure they'll say we've done it, didn't we?": [
        40, 1101, 1654, 484, 1183, 910, 356, 1053, 1760, 340, 11, 1422, 470, 356, 30,
    ],
    "  leading and trailing  ": [220, 3756, 290, 25462, 220, 220],
}
# fmt: on


@pytest.fixture(scope="module")
def reference_tokenizer():
    """GPT-2's byte-level BPE as implemented by Hugging Face `tokenizers`, not by tiktoken."""
    bpe_dir = files("gpt_classifier") / "assets" / "gpt2-bpe"
    tokenizer = Tokenizer(models.BPE.from_file(str(bpe_dir / "encoder.json"), str(bpe_dir / "vocab.bpe")))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_book_example():
    assert encode(BOOK_TEXT) == BOOK_IDS
    assert get_tokenizer().decode(BOOK_IDS) == BOOK_TEXT


def test_vocabulary_and_special_token():
    tokenizer = get_tokenizer()
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_token == PAD_TOKEN_ID == 50256
    assert encode(ENDOFTEXT) == [50256]
    # in ordinary text (how the data module encodes) the marker is just characters
    assert 50256 not in tokenizer.encode_ordinary(ENDOFTEXT)


@pytest.mark.parametrize("text", list(KNOWN_IDS))
def test_known_ids_and_round_trip(text, reference_tokenizer):
    assert encode(text) == KNOWN_IDS[text]
    assert reference_tokenizer.encode(text).ids == KNOWN_IDS[text]
    assert get_tokenizer().decode(encode(text)) == text


def test_matches_reference_on_every_sms(sms_split_dir, reference_tokenizer):
    splits = ("train", "validation", "test")
    texts = [str(t) for s in splits for t in pd.read_csv(sms_split_dir / f"{s}.csv")["Text"]]
    ours = get_tokenizer().encode_ordinary_batch(texts)
    reference = [e.ids for e in reference_tokenizer.encode_batch(texts)]
    mismatches = [t for t, a, b in zip(texts, ours, reference, strict=True) if a != b]
    assert mismatches == []
    assert [get_tokenizer().decode(ids) for ids in ours] == texts


def test_builds_without_network(tmp_path):
    """In a fresh interpreter with every socket refused and an empty tiktoken cache, it still works,
    while tiktoken's own `get_encoding("gpt2")` fails there (so the guard is effective)."""
    script = textwrap.dedent(
        """
        import json, socket

        class NoNetwork(OSError):
            pass

        def refuse(*args, **kwargs):
            raise NoNetwork("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        try:
            socket.socket().connect(("127.0.0.1", 9))
            guard = "open"
        except NoNetwork:
            guard = "closed"

        from gpt_classifier.data.tokenizer import encode, get_tokenizer

        ids = encode("Hello, do you like tea? <|endoftext|>")
        n_vocab = get_tokenizer().n_vocab

        import tiktoken
        try:
            tiktoken.get_encoding("gpt2")
            tiktoken_gpt2 = "loaded"
        except Exception:
            tiktoken_gpt2 = "failed"
        print(json.dumps({"guard": guard, "ids": ids, "n_vocab": n_vocab, "tiktoken_gpt2": tiktoken_gpt2}))
        """
    )
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "DATA_GYM_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"guard": "closed", "ids": BOOK_IDS, "n_vocab": 50257, "tiktoken_gpt2": "failed"}


WORDS = st.sampled_from(
    ["a", "spam", "Free", "'s", " ", "  ", "\n", "\t", "é", "日本", "🙂", "123", "!!", "<|endoftext|>"]
)


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=120),
    max_length=st.integers(0, 40),
    side=st.sampled_from(["right", "left"]),
)
def test_bounded_encoding_equals_cutting_the_whole_encoding(words, max_length, side):
    tokenizer = get_tokenizer()
    text = "".join(words)
    whole = tokenizer.encode_ordinary(text)
    want = whole[:max_length] if side == "right" else whole[max(len(whole) - max_length, 0) :]
    assert encode_bounded(tokenizer, text, max_length, side) == want
    assert encode_bounded_batch(tokenizer, [text, "hi"], max_length, side)[0] == want


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000,
        "x" + " " * 50_000 + "y",
        "ab" * 40_000,
        "Supercalifragilistic" * 5000,
        "😀" * 30_000,
        "1" * 60_000,
        " \n" * 30_000 + "end",
        ("word " * 20_000).strip(),
    ],
)
@pytest.mark.parametrize("side", ["right", "left"])
def test_long_texts_equal_cutting_the_whole_encoding(text, side):
    tokenizer = get_tokenizer()
    whole = tokenizer.encode_ordinary(text)
    for max_length in (1, 60, 256, 1024):
        want = whole[:max_length] if side == "right" else whole[-max_length:]
        assert encode_bounded(tokenizer, text, max_length, side) == want, max_length


def test_a_million_spaces_and_a_letter_are_read_only_as_far_as_needed():
    """Whole, tiktoken overflows its regex's stack on this text (a PanicException)."""
    text = " " * 999_999 + "x"
    tokenizer = get_tokenizer()
    started = time.perf_counter()
    assert encode_bounded(tokenizer, text, 256) == [220] * 256
    assert encode_bounded(tokenizer, text, 256, "left") == [220] * 255 + [2124]
    assert encode_bounded_batch(tokenizer, [text, "hi"], 1024)[0] == [220] * 1024
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("side", ["right", "left"])
def test_corpus_and_prediction_encoding_are_bounded(side):
    """`encode_corpus` (training) and `LongTexts.encode` (prediction) cut exactly as whole tokenizing
    would, and alike."""
    tokenizer = get_tokenizer()
    texts = ["short", " " * 999_999 + "x", "word " * 5000, "", "a" * 20_000]
    whole = [tokenizer.encode_ordinary(text) for text in texts[2:]]
    corpus = [ids.tolist() for ids in encode_corpus(tokenizer, texts, max_length=7, side=side)]
    assert corpus[0] == tokenizer.encode_ordinary("short") and corpus[1] in ([220] * 7, [220] * 6 + [2124])
    assert corpus[2:] == [ids[:7] if side == "right" else ids[-7:] for ids in whole]
    reading = LongTexts(max_length=7, truncation_side=side)
    assert [list(reading.encode(tokenizer, text)[0]) for text in texts] == corpus
