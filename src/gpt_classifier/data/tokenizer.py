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
