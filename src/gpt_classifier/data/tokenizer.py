"""GPT-2's byte-pair tokenizer, built offline from the BPE files shipped with the package.

tiktoken normally downloads `encoder.json` and `vocab.bpe` on first use. We ship the same files
(OpenAI, MIT licence) and feed them to tiktoken's own loader, which checks the same sha256 hashes,
so tokenization never touches the network.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from importlib.resources import as_file, files

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenization regex

ENDOFTEXT = "<|endoftext|>"
PAD_TOKEN_ID = 50256
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


@contextlib.contextmanager
def _tiktoken_cache_disabled() -> Iterator[None]:
    """tiktoken skips its file cache when TIKTOKEN_CACHE_DIR is empty."""
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """Return an Encoding identical to `tiktoken.get_encoding("gpt2")`, without the network."""
    bpe_dir = files("gpt_classifier") / "assets" / "gpt2-bpe"
    with (
        as_file(bpe_dir / "vocab.bpe") as vocab_bpe,
        as_file(bpe_dir / "encoder.json") as encoder_json,
        _tiktoken_cache_disabled(),  # our files are local: copying them to a cache dir could only fail
    ):
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe),
            encoder_json_file=str(encoder_json),
            vocab_bpe_hash=VOCAB_BPE_SHA256,
            encoder_json_hash=ENCODER_JSON_SHA256,
        )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: PAD_TOKEN_ID},
    )


def encode(text: str) -> list[int]:
    """Encode text; a literal `<|endoftext|>` in the text is the special token, as in the book."""
    return get_tokenizer().encode(text, allowed_special={ENDOFTEXT})


# Characters first read per token kept: GPT-2 tokens average ~4 characters of English.
WINDOW_CHARS_PER_TOKEN = 8
# Tokens beyond `max_length` a window must give before its cut end (where a word or a run of spaces
# may be split differently than in the whole text) is far enough from the tokens kept.
CUT_MARGIN_TOKENS = 16


def encode_bounded(
    tokenizer: tiktoken.Encoding, text: str, max_length: int, side: str = "right"
) -> list[int]:
    """The first (`side="right"`) or last (`"left"`) `max_length` token ids of `text`, as tokenizing it
    whole and then cutting would give, but reading only a window of characters near the kept end.

    The window grows fourfold until it gives `CUT_MARGIN_TOKENS` more tokens than are kept, or covers
    the text: a 1 MB text costs what a few thousand characters cost, and runs of a million spaces
    (which make tiktoken's regex overflow its stack) are never tokenized whole.
    """
    window = WINDOW_CHARS_PER_TOKEN * max_length + 64
    while True:
        piece = text if window >= len(text) else text[:window] if side == "right" else text[-window:]
        ids = tokenizer.encode_ordinary(piece)
        if piece is text or len(ids) > max_length + CUT_MARGIN_TOKENS:
            return cut(ids, max_length, side)
        window *= 4


def cut(ids: list[int], max_length: int, side: str = "right") -> list[int]:
    """The first (`right`) or last (`left`) `max_length` ids."""
    return ids[:max_length] if side == "right" else ids[max(len(ids) - max_length, 0) :]


def encode_bounded_batch(
    tokenizer: tiktoken.Encoding, texts: list[str], max_length: int | None, side: str = "right"
) -> list[list[int]]:
    """`encode_bounded` of each text: short texts in one call of tiktoken's threaded batch encoder,
    long ones each through their window. `max_length=None` tokenizes every text whole."""
    if max_length is None:
        return tokenizer.encode_ordinary_batch(texts)
    short_chars = WINDOW_CHARS_PER_TOKEN * max_length + 64
    short = [i for i, text in enumerate(texts) if len(text) <= short_chars]
    encoded: list[list[int]] = [[] for _ in texts]
    for i, ids in zip(short, tokenizer.encode_ordinary_batch([texts[i] for i in short]), strict=True):
        encoded[i] = cut(ids, max_length, side)
    for i in sorted(set(range(len(texts))) - set(short)):
        encoded[i] = encode_bounded(tokenizer, texts[i], max_length, side)
    return encoded
