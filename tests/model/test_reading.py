"""`Reading` (which position a classifier reads, which positions it needs) and `decide` (the class
from probabilities and a threshold), at their edges and as properties (hypothesis)."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import TINY_MODEL
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import Reading, build_classifier, decide, per_example


def test_unknown_settings_are_one_line_errors():
    message = "classifier.position='middle' is unknown: use last, first or flexible"
    with pytest.raises(GPTClassifierError, match=f"^{re.escape(message)}$"):
        Reading(position="middle")
    message = "classifier.pooling='max' is unknown: use token or mean"
    with pytest.raises(GPTClassifierError, match=f"^{re.escape(message)}$"):
        Reading(pooling="max")


def test_defaults_are_the_books():
    assert Reading() == Reading(position="last", pooling="token", causal=True)


@pytest.mark.parametrize(
    ("padding", "position", "read"),
    [
        ("none", "last", "flexible"),  # unpadded: the last token is the last real one
        ("none", "first", "first"),
        ("none", "flexible", "flexible"),
        ("max_length", "last", "last"),
        ("dynamic", "last", "last"),
    ],
)
def test_for_padding(padding, position, read):
    reading = Reading.for_padding(padding, position=position, pooling="mean", causal=False)
    assert reading == Reading(position=read, pooling="mean", causal=False)


def test_for_padding_without_a_position_reads_the_last_real_token_unpadded():
    assert Reading.for_padding("none") == Reading(position="flexible")
    assert Reading.for_padding("max_length") == Reading(position="last")


LENGTHS = torch.tensor([3, 1, 5])


@pytest.mark.parametrize(
    ("position", "widths", "read"),
    [
        ("last", 5, [4, 4, 4]),
        ("last", torch.tensor([4, 2, 5]), [3, 1, 4]),
        ("first", 5, [0, 0, 0]),
        ("flexible", 5, [2, 0, 4]),
        ("flexible", torch.tensor([4, 2, 5]), [2, 0, 4]),
    ],
)
def test_read_positions(position, widths, read):
    assert Reading(position=position).read_positions(LENGTHS, widths).tolist() == read


@pytest.mark.parametrize(
    ("reading", "needed"),
    [
        (Reading(position="last"), [5, 5, 5]),
        (Reading(position="first"), [1, 1, 1]),
        (Reading(position="flexible"), [3, 1, 5]),
        (Reading(pooling="mean"), [3, 1, 5]),
        (Reading(position="first", causal=False), [5, 5, 5]),
        (Reading(pooling="mean", causal=False), [5, 5, 5]),
    ],
)
def test_needed_lengths(reading, needed):
    assert reading.needed_lengths(LENGTHS, 5).tolist() == needed


def test_per_example_is_a_new_tensor_of_the_lengths_shape():
    widths = torch.tensor([7])
    expanded = per_example(widths, LENGTHS)
    assert expanded.tolist() == [7, 7, 7] and expanded.dtype == LENGTHS.dtype
    expanded[0] = 1  # a copy: the caller's widths stay as they were
    assert widths.tolist() == [7]
    assert per_example(6, LENGTHS).tolist() == [6, 6, 6]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=8),
    st.integers(0, 10),
    st.sampled_from(["last", "first", "flexible"]),
    st.sampled_from(["token", "mean"]),
    st.booleans(),
)
def test_the_read_position_is_a_real_token_the_output_depends_on(lengths, extra, position, pooling, causal):
    """Inside the padded width, on a real token (or the pad after it for `last`), and needed."""
    lengths = torch.tensor(lengths)
    width = int(lengths.max()) + extra
    reading = Reading(position=position, pooling=pooling, causal=causal)
    read = reading.read_positions(lengths, width)
    needed = reading.needed_lengths(lengths, width)
    assert ((read >= 0) & (read < width)).all()
    assert ((needed >= 1) & (needed <= width)).all()
    if pooling == "token":
        assert (needed > read).all()  # the read position is among the ones computed
    if position == "flexible":
        assert (read == lengths - 1).all()


PROBS = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.25, 0.75], [0.5, 0.5]])


def test_decide_without_a_threshold_is_argmax():
    assert decide(PROBS, positive_class=1, threshold=None).tolist() == [0, 1, 1, 0]
    three = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert decide(three, positive_class=2, threshold=0.1).tolist() == [1, 0]  # two classes only


@pytest.mark.parametrize(
    ("positive_class", "threshold", "labels"),
    [
        (1, 0.75, [0, 0, 1, 0]),  # 0.75 itself is positive (>=)
        (1, 0.3, [1, 1, 1, 1]),
        (1, 0.30001, [0, 1, 1, 1]),
        (1, 0.5, [0, 1, 1, 1]),
        (0, 0.7, [0, 1, 1, 1]),
        (0, 0.4, [0, 0, 1, 0]),
        (0, 0.0, [0, 0, 0, 0]),
        (1, 1.01, [0, 0, 0, 0]),
    ],
)
def test_decide_with_a_threshold(positive_class, threshold, labels):
    assert decide(PROBS, positive_class=positive_class, threshold=threshold).tolist() == labels


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=20),
    st.integers(0, 1),
    st.floats(0, 1, width=32),
)
def test_decide_is_positive_exactly_at_and_above_the_threshold(positive_probs, positive_class, threshold):
    column = torch.tensor(positive_probs)
    probs = torch.stack([1 - column, column] if positive_class else [column, 1 - column], dim=1)
    decided = decide(probs, positive_class=positive_class, threshold=threshold)
    want = [positive_class if p >= threshold else 1 - positive_class for p in column.tolist()]
    assert decided.tolist() == want


def test_a_classifier_decides_with_its_own_threshold_unless_given_one():
    classifier = build_classifier(TINY_MODEL, ["ham", "spam"])
    assert classifier.decision() == {"positive_class": 1, "threshold": None, "temperature": 1.0}
    classifier.set_decision({"threshold": 0.75})
    assert classifier.decide(PROBS).tolist() == [0, 0, 1, 0]
    assert classifier.decide(PROBS, threshold=0.3).tolist() == [1, 1, 1, 1]
    assert classifier.decide(PROBS, threshold=0.0).tolist() == [1, 1, 1, 1]  # 0 overrides too
    classifier.set_decision({"positive_class": 0, "threshold": 0.4})
    assert classifier.decision() == {"positive_class": 0, "threshold": 0.4, "temperature": 1.0}
    assert classifier.decide(PROBS).tolist() == [0, 0, 1, 0]
    classifier.set_decision({})  # no threshold: argmax; the positive class stays
    assert classifier.decision() == {"positive_class": 0, "threshold": None, "temperature": 1.0}
