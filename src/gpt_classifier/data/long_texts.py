"""Texts longer than the context: `truncate`, `head_tail` or overlapping `windows` (`data.long_texts`).

`LongTexts` says how one text's tokens become the sequences the model reads: one cut sequence
(`truncate`, the book), the first `head_tokens` and last `tail_tokens` (`head_tail`), or windows of
`max_length` tokens every `stride` tokens (`windows`). The window rule: starts at 0, stride,
2 x stride... and a last window ending at the text's end; at most `max_windows` of them, the first
ones, so a huge text costs at most `max_windows` windows of compute and its tokenization stops after
`(max_windows - 1) x stride + max_length` tokens (`bounded_prefix_tokens`). A text's logits are the
mean (or max) of its windows' logits (`aggregate`), in training as in prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import regex
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

from gpt_classifier.errors import GPTClassifierError

log = logging.getLogger(__name__)

Mode = Literal["truncate", "head_tail", "windows"]
Aggregate = Literal["mean", "max"]
PRETOKENS = regex.compile(r50k_pat_str)  # GPT-2's pre-tokenization: BPE never merges across its pieces
FIRST_PREFIX_CHARS = 4096


def char_budget(count: int) -> int:
    """The most characters read for `count` tokens: GPT-2 tokens average ~4 characters of English and
    rarely exceed 32, so only a text made of one giant pre-token (a 1 MB word) reaches this bound."""
    return 32 * count + FIRST_PREFIX_CHARS


def bounded_prefix_tokens(tokenizer: tiktoken.Encoding, text: str, count: int) -> list[int]:
    """The first `count` tokens of `text` (all, if fewer), equal to `encode_ordinary(text)[:count]`,
    tokenizing a growing prefix of characters instead of the whole text.

    A prefix's pre-tokens are the text's own except the last one (it may continue past the cut), so
    the tokens before the last pre-token's start are exact; the prefix doubles until they are enough,
    up to `char_budget` characters, where a giant last pre-token is tokenized as cut there.
    """
    chars = min(max(FIRST_PREFIX_CHARS, 8 * count), char_budget(count))
    while chars < len(text):
        prefix = text[:chars]
        if chars >= char_budget(count):
            return tokenizer.encode_ordinary(prefix)[:count]
        starts = [piece.start() for piece in PRETOKENS.finditer(prefix)]
        ids = tokenizer.encode_ordinary(prefix[: starts[-1] if starts else 0])
        if len(ids) >= count:
            return ids[:count]
        chars = min(2 * chars, char_budget(count))
    return tokenizer.encode_ordinary(text)[:count]


def bounded_suffix_tokens(tokenizer: tiktoken.Encoding, text: str, count: int) -> list[int]:
    """The last `count` tokens of `text`, tokenizing a growing suffix of characters.

    A suffix's first pre-tokens may be cut or split otherwise than in the whole text; from the first
    whitespace-led pre-token after its second piece on, the split is the text's own (GPT-2's pieces
    start again at every space), so only the tokens from there are kept. Bounded as the prefix is.
    """
    chars = min(max(FIRST_PREFIX_CHARS, 8 * count), char_budget(count))
    while chars < len(text):
        suffix = text[-chars:]
        if chars >= char_budget(count):
            ids = tokenizer.encode_ordinary(suffix)
            return ids[max(len(ids) - count, 0) :]
        starts = [m.start() for m in PRETOKENS.finditer(suffix)][2:]
        resync = next((s for s in starts if suffix[s].isspace()), None)
        if resync is not None:
            ids = tokenizer.encode_ordinary(suffix[resync:])
            if len(ids) >= count:
                return ids[len(ids) - count :]
        chars = min(2 * chars, char_budget(count))
    ids = tokenizer.encode_ordinary(text)
    return ids[max(len(ids) - count, 0) :]


@dataclass(frozen=True)
class LongTexts:
    """How a text longer than `max_length` tokens is read (see the module's docstring)."""

    mode: Mode = "truncate"
    max_length: int = 1024
    stride: int | None = None  # windows: null is max_length // 2 (half of each window overlaps)
    max_windows: int = 8
    head_tokens: int | None = None  # head_tail: null is a quarter of max_length
    tail_tokens: int | None = None  # head_tail: null is the rest of max_length
    aggregate: Aggregate = "mean"
    truncation_side: str = "right"

    def __post_init__(self) -> None:
        if self.mode not in ("truncate", "head_tail", "windows"):
            raise GPTClassifierError(
                f"data.long_texts={self.mode!r} is unknown: use truncate, head_tail or windows"
            )
        if self.aggregate not in ("mean", "max"):
            raise GPTClassifierError(f"data.window_aggregate={self.aggregate!r} is unknown: use mean or max")
        if self.mode == "windows" and not 0 < self.window_stride <= self.max_length:
            raise GPTClassifierError(
                f"data.window_stride={self.stride} must be between 1 and data.max_length={self.max_length}"
            )
        if self.mode == "windows" and self.max_windows < 1:
            raise GPTClassifierError(f"data.max_windows={self.max_windows} must be at least 1")
        head, tail = self.head_tail
        if self.mode == "head_tail" and (head < 0 or tail < 0 or head + tail != self.max_length):
            raise GPTClassifierError(
                f"data.head_tokens={self.head_tokens} and data.tail_tokens={self.tail_tokens} must be >= 0 "
                f"and add up to data.max_length={self.max_length} (or leave one null)"
            )

    @classmethod
    def from_settings(cls, data: dict[str, Any], max_length: int) -> LongTexts:
        """From a checkpoint's or an export's data settings (absent keys: the book's truncation)."""
        return cls(
            mode=data.get("long_texts") or "truncate",
            max_length=max_length,
            stride=data.get("window_stride"),
            max_windows=data.get("max_windows") or 8,
            head_tokens=data.get("head_tokens"),
            tail_tokens=data.get("tail_tokens"),
            aggregate=data.get("window_aggregate") or "mean",
            truncation_side=data.get("truncation_side") or "right",
        )

    def settings(self) -> dict[str, Any]:
        """The data settings a checkpoint and every export carry (the keys `from_settings` reads)."""
        return {
            "long_texts": self.mode,
            "window_stride": self.stride,
            "max_windows": self.max_windows,
            "head_tokens": self.head_tokens,
            "tail_tokens": self.tail_tokens,
            "window_aggregate": self.aggregate,
            "truncation_side": self.truncation_side,
        }

    @property
    def window_stride(self) -> int:
        return self.stride if self.stride is not None else max(self.max_length // 2, 1)

    @property
    def head_tail(self) -> tuple[int, int]:
        """(head, tail) tokens kept by `head_tail`; a null one is what the other leaves of `max_length`."""
        head, tail = self.head_tokens, self.tail_tokens
        if head is None and tail is None:
            head = self.max_length // 4
        if head is None:
            head = self.max_length - tail  # type: ignore[operator]
        if tail is None:
            tail = self.max_length - head
        return head, tail

    def window_starts(self, length: int) -> list[int]:
        """Where the windows of a text of `length` tokens start (the module's rule, at most `max_windows`)."""
        if length <= self.max_length:
            return [0]
        starts = [*range(0, length - self.max_length, self.window_stride), length - self.max_length]
        if len(starts) <= self.max_windows:
            return starts
        return [i * self.window_stride for i in range(self.max_windows)]

    @property
    def tokens_read(self) -> int:
        """The most tokens of a text's beginning that `windows` reads (what bounded tokenization needs)."""
        return (self.max_windows - 1) * self.window_stride + self.max_length

    def sequences(self, ids: Sequence[int]) -> list[Sequence[int]]:
        """What the model reads of one text's token ids: one sequence, or its windows."""
        if self.mode == "windows":
            return [ids[start : start + self.max_length] for start in self.window_starts(len(ids))]
        if self.mode == "head_tail" and len(ids) > self.max_length:
            head, tail = self.head_tail
            return [list(ids[:head]) + list(ids[len(ids) - tail :])]
        if self.truncation_side == "left":
            return [ids[max(len(ids) - self.max_length, 0) :]]
        return [ids[: self.max_length]]

    def encode(self, tokenizer: tiktoken.Encoding, text: str) -> list[Sequence[int]]:
        """The sequences of one text, tokenizing only what they use (a 1 MB text is not read whole)."""
        if self.mode == "windows":
            # One token more than the windows read: it tells whether the text goes on past them.
            return self.sequences(bounded_prefix_tokens(tokenizer, text, self.tokens_read + 1))
        if self.mode == "head_tail":
            head, tail = self.head_tail
            ids = bounded_prefix_tokens(tokenizer, text, self.max_length + 1)
            if len(ids) <= self.max_length:
                return [ids]
            return [ids[:head] + bounded_suffix_tokens(tokenizer, text, tail)]
        if self.truncation_side == "left":
            return [bounded_suffix_tokens(tokenizer, text, self.max_length)]
        return [bounded_prefix_tokens(tokenizer, text, self.max_length)]


def aggregate_rows(logits: np.ndarray, text_of: np.ndarray, texts: int, aggregate: Aggregate) -> np.ndarray:
    """Text logits `[texts, classes]` from window logits `[windows, classes]` (numpy), `text_of` each
    window's text: the mean or the max over its windows, as `windows.aggregate_logits` in training."""
    if aggregate == "max":
        out = np.full((texts, logits.shape[1]), -np.inf, dtype=logits.dtype)
        np.maximum.at(out, text_of, logits)
        return out
    out = np.zeros((texts, logits.shape[1]), dtype=logits.dtype)
    np.add.at(out, text_of, logits)
    return out / np.bincount(text_of, minlength=texts)[:, None].astype(logits.dtype)
