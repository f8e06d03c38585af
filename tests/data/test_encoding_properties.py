"""Property tests (hypothesis) of the text path: reading texts from a file, tokenizing and cutting them,
`TokenArrays` packing and truncation, and padding a batch: every round trip gives back what went in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_classifier.cli.predict import read_texts
from gpt_classifier.data.encoding import TokenArrays, pad_batch
from gpt_classifier.data.tokenizer import PAD_TOKEN_ID, encode_bounded_batch, get_tokenizer

TOKENIZER = get_tokenizer()
token_lists = st.lists(st.lists(st.integers(0, 50256), max_size=12), max_size=8)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)  # any Unicode but surrogates


@settings(max_examples=80, deadline=None)
@given(token_lists)
def test_token_arrays_give_back_each_list(lists):
    arrays = TokenArrays.from_lists(lists)
    assert len(arrays) == len(lists)
    assert [list(arrays[i]) for i in range(len(lists))] == lists
    assert arrays.lengths.tolist() == [len(ids) for ids in lists]
    if lists:
        assert list(arrays[-1]) == lists[-1]
    for outside in (len(lists), -len(lists) - 1):
        with pytest.raises(IndexError):
            arrays[outside]


@settings(max_examples=60, deadline=None)
@given(st.lists(token_lists, max_size=4))
def test_concatenated_token_arrays_are_the_lists_in_order(parts):
    joined = TokenArrays.concat([TokenArrays.from_lists(part) for part in parts])
    every = [ids for part in parts for ids in part]
    assert [list(ids) for ids in joined] == every
    assert joined.offsets.tolist() == np.concatenate([[0], np.cumsum([len(ids) for ids in every])]).tolist()


@settings(max_examples=80, deadline=None)
@given(token_lists, st.integers(1, 14))
def test_truncation_keeps_the_beginning_or_the_end(lists, max_length):
    arrays = TokenArrays.from_lists(lists)
    assert [list(ids) for ids in arrays.truncate(max_length)] == [ids[:max_length] for ids in lists]
    assert [list(ids) for ids in arrays.truncate(max_length, side="left")] == [
        ids[-max_length:] for ids in lists
    ]


@settings(max_examples=80, deadline=None)
@given(token_lists.filter(lambda lists: lists and all(lists)), st.integers(0, 3))
def test_padding_keeps_every_token_and_pads_after(lists, extra):
    width = max(map(len, lists)) + extra
    for pad_width in (None, width):
        input_ids, lengths = pad_batch(lists, PAD_TOKEN_ID, pad_width)
        assert input_ids.shape == (len(lists), pad_width or max(map(len, lists)))
        assert lengths.tolist() == [len(ids) for ids in lists]
        for row, ids in zip(input_ids.tolist(), lists, strict=True):
            assert row == ids + [PAD_TOKEN_ID] * (len(row) - len(ids))


@settings(max_examples=60, deadline=None)
@given(st.lists(texts, max_size=5), st.integers(1, 8))
def test_texts_are_tokenized_as_plain_text_and_cut(batch, max_length):
    """Special-token strings stay text; the cut keeps the first tokens; the whole decodes back."""
    whole = encode_bounded_batch(TOKENIZER, batch, None)
    assert [TOKENIZER.decode(ids) for ids in whole] == batch
    assert encode_bounded_batch(TOKENIZER, batch, max_length) == [ids[:max_length] for ids in whole]
    assert encode_bounded_batch(TOKENIZER, ["<|endoftext|>"], None) != [[PAD_TOKEN_ID]]


@settings(max_examples=80, deadline=None)
@given(st.lists(texts.filter(lambda t: not {"\n", "\r", "\ufeff"} & set(t)), min_size=1, max_size=6))
def test_a_file_gives_its_non_blank_lines_in_order(tmp_path_factory, lines):
    """One text per `\\n` line (CRLF too), blank ones counted, the final newline not. (A leading
    byte-order mark is no text: the file is read as utf-8-sig.)"""
    kept = [line for line in lines if line.strip()]
    file = tmp_path_factory.mktemp("texts") / "texts.txt"
    for ending in ("\n", "\r\n"):
        file.write_bytes((ending.join(lines) + ending).encode("utf-8"))
        if not kept:
            continue
        assert read_texts([], str(file)) == (kept, len(lines) - len(kept))
