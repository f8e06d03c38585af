"""`training/decision.py` at its edges: class weights, the positive class, the threshold picked for a
precision (hypothesis: the lowest that reaches it), precision and recall at `>=`, scores against
scikit-learn, and the settings' one-line errors."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.training.decision import (
    check_settings,
    choose_threshold,
    class_weights,
    pick_threshold,
    positive_index,
    precision_recall_at,
    scores,
)


def test_balanced_weights_are_scikit_learns_and_exact():
    weights = class_weights("balanced", [0, 0, 0, 1, 2, 2], num_classes=3)
    assert weights.dtype == torch.float64
    assert weights.tolist() == [6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2)]


def test_given_weights_are_taken_as_they_are():
    weights = class_weights([0, 2.5], [0, 1], num_classes=2)  # zero is allowed: a class ignored
    assert weights.dtype == torch.float64 and weights.tolist() == [0.0, 2.5]
    assert class_weights(None, [0, 0], num_classes=2) is None


@pytest.mark.parametrize(
    ("setting", "labels", "message"),
    [
        (
            "balanced",
            [0, 3, 3],
            "loss.class_weights=balanced: classes [1, 2] have no training example; pass a list",
        ),
        ("balanced", [0, 1, 2, 1], "loss.class_weights=balanced: classes [3] have no training example"),
        ([1, 2, 3], [0, 1], "loss.class_weights=[1, 2, 3] must be null, balanced, or 4 non-negative numbers"),
        ([1, 2, 3, -0.001], [0], "loss.class_weights=[1, 2, 3, -0.001] must be null, balanced, or 4"),
        ("inverse", [0], "loss.class_weights='inverse' must be null, balanced, or 4 non-negative numbers"),
    ],
)
def test_bad_class_weights_name_the_fix(setting, labels, message):
    with pytest.raises(GPTClassifierError, match=re.escape(message)):
        class_weights(setting, labels, num_classes=4)


def test_positive_index():
    assert positive_index(["ham", "spam"], None) == 1
    assert positive_index(["a", "b", "c"], None) == 2
    assert positive_index(["spam", "ham"], "spam") == 0
    assert positive_index([0, 1], 1) == 1  # integer class names compare as text
    with pytest.raises(
        GPTClassifierError, match=re.escape("data.positive_class='eggs' is not a class: use one of ham, spam")
    ):
        positive_index(["ham", "spam"], "eggs")


def test_precision_and_recall_count_a_probability_equal_to_the_threshold_as_positive():
    probs = torch.tensor([0.2, 0.5, 0.5, 0.9])
    positive = torch.tensor([0, 1, 0, 1])
    assert precision_recall_at(probs, positive, 0.5) == (2 / 3, 1.0)
    assert precision_recall_at(probs, positive, 0.9) == (1.0, 0.5)
    assert precision_recall_at(probs, positive, 0.95) == (0.0, 0.0)  # nothing predicted
    assert precision_recall_at(probs, torch.zeros(4, dtype=torch.long), 0.5) == (0.0, 0.0)  # no positives


def test_pick_threshold_reaches_the_precision_exactly():
    probs = torch.tensor([0.1, 0.3, 0.6, 0.7])
    positive = torch.tensor([0, 1, 0, 1])
    assert pick_threshold(probs, positive, 0.5) == pytest.approx(0.1)  # 2 of 4 at >= 0.1: exactly enough
    assert pick_threshold(probs, positive, 2 / 3) == pytest.approx(0.3)  # 2 of 3 at >= 0.3: exactly enough
    assert pick_threshold(probs, positive, 0.67) == pytest.approx(0.7)
    assert pick_threshold(probs, positive, 1.0) == pytest.approx(0.7)
    assert pick_threshold(torch.tensor([0.9, 0.2]), torch.tensor([0, 1]), 0.6) is None


def candidate_precisions(probs: torch.Tensor, positive: torch.Tensor) -> dict[float, float]:
    """Precision at each distinct probability used as the threshold (positive when >= it)."""
    return {t: precision_recall_at(probs, positive, t)[0] for t in sorted(set(probs.tolist()))}


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=1, max_size=30),
    st.sampled_from([0.3, 0.5, 0.75, 0.9, 1.0]),
)
def test_pick_threshold_is_the_lowest_probability_that_reaches_the_precision(rows, min_precision):
    probs = torch.tensor([level / 20 for level, _ in rows], dtype=torch.float32)
    positive = torch.tensor([int(is_positive) for _, is_positive in rows])
    reached = [t for t, p in candidate_precisions(probs, positive).items() if p >= min_precision - 1e-12]
    picked = pick_threshold(probs, positive, min_precision)
    if not reached:
        assert picked is None
    else:
        assert picked == pytest.approx(min(reached), abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), min_size=2, max_size=40))
def test_two_class_scores_equal_scikit_learn(rows):
    positive_probs = torch.tensor([level / 50 for level, _ in rows], dtype=torch.float64)
    labels = torch.tensor([int(is_positive) for _, is_positive in rows])
    if len(set(labels.tolist())) < 2:
        labels[0] = 1 - labels[0]
    probs = torch.stack([1 - positive_probs, positive_probs], dim=1)
    result = scores(probs, labels, positive_class=1, threshold=None)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, positive_probs), abs=1e-6)
    assert result["average_precision"] == pytest.approx(
        average_precision_score(labels, positive_probs), abs=1e-6
    )
    want = precision_recall_at(positive_probs.float(), labels, 0.5)
    assert (result["threshold"], result["precision"], result["recall"]) == pytest.approx((0.5, *want))


def test_scores_of_the_negative_class_and_a_threshold():
    """Class 0 called positive: its column is the score, its rows the target."""
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.7, 0.3]])
    labels = torch.tensor([0, 1, 1, 0])
    result = scores(probs, labels, positive_class=0, threshold=0.6)
    assert result["roc_auc"] == pytest.approx(1.0)
    assert (result["threshold"], result["precision"], result["recall"]) == pytest.approx((0.6, 2 / 3, 1.0))


def test_scores_expected_calibration_error():
    """Confidence 0.8 everywhere, half of it right: ECE is |0.8 - 0.5| in the one occupied bin."""
    probs = torch.tensor([[0.8, 0.2], [0.8, 0.2], [0.2, 0.8], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1, 0])
    assert scores(probs, labels, positive_class=1, threshold=None)["ece"] == pytest.approx(0.3, abs=1e-6)


def test_scores_expected_calibration_error_has_15_bins():
    """Confidences 0.62, 0.66 (bin (0.600, 0.667] of 15) and 0.70 (bin (0.667, 0.733]), right, wrong,
    right: (|0.64 - 0.5| * 2 + |0.70 - 1|) / 3. With 16 bins each would sit alone (0.447)."""
    probs = torch.tensor([[0.62, 0.38], [0.66, 0.34], [0.30, 0.70]])
    labels = torch.tensor([0, 1, 1])
    ece = scores(probs, labels, positive_class=1, threshold=None)["ece"]
    assert ece == pytest.approx((0.14 * 2 + 0.3) / 3, abs=1e-6)


def test_scores_of_three_classes_are_macro_one_vs_rest():
    probs = torch.tensor(
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3], [0.5, 0.1, 0.4]]
    )
    labels = torch.tensor([0, 1, 2, 0, 2])
    result = scores(probs, labels, positive_class=2, threshold=0.5)
    assert set(result) == {"roc_auc", "average_precision", "ece"}
    want = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert result["roc_auc"] == pytest.approx(want, abs=1e-6)
    per_class = [average_precision_score(labels == k, probs[:, k]) for k in range(3)]
    assert result["average_precision"] == pytest.approx(sum(per_class) / 3, abs=1e-6)


@pytest.mark.parametrize(
    "decision",
    [
        {},
        {"threshold": 0},
        {"threshold": 1},
        {"threshold": 0.5},
        {"min_precision": 1},
        {"min_precision": 1e-9},
    ],
)
def test_settings_that_work(decision):
    check_settings(decision, num_classes=2)


@pytest.mark.parametrize(
    ("decision", "num_classes", "message"),
    [
        ({"threshold": 0.5}, 3, "decision.* needs two classes, not 3: drop it (argmax)"),
        ({"min_precision": 0.9}, 1, "decision.* needs two classes, not 1: drop it (argmax)"),
        (
            {"threshold": 0.5, "min_precision": 0.9},
            2,
            "pass decision.threshold or decision.min_precision, not both",
        ),
        ({"threshold": -0.01}, 2, "decision.threshold=-0.01 must be a probability in [0, 1]"),
        ({"threshold": 1.01}, 2, "decision.threshold=1.01 must be a probability in [0, 1]"),
        ({"min_precision": 0}, 2, "decision.min_precision=0 must be in (0, 1]"),
        ({"min_precision": 1.01}, 2, "decision.min_precision=1.01 must be in (0, 1]"),
    ],
)
def test_settings_that_cannot_work(decision, num_classes, message):
    with pytest.raises(GPTClassifierError, match=f"^{re.escape(message)}$"):
        check_settings(decision, num_classes)


def test_no_decision_settings_suit_any_number_of_classes():
    check_settings({"threshold": None, "min_precision": None}, num_classes=5)


def test_choose_threshold_says_what_it_picked(caplog):
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 0, 1])
    with caplog.at_level(logging.INFO, logger="gpt_classifier.training.decision"):
        assert choose_threshold(probs, labels, positive_class=1, min_precision=1.0) == pytest.approx(0.8)
    assert caplog.messages == [
        "decision threshold 0.8000: validation precision 1.0000, recall 0.5000 (decision.min_precision=1.0)"
    ]


def test_choose_threshold_keeps_argmax_when_no_threshold_is_precise_enough(caplog):
    probs = torch.tensor([[0.1, 0.9], [0.7, 0.3], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1])  # the most confident positive is wrong
    with caplog.at_level(logging.INFO, logger="gpt_classifier.training.decision"):
        assert choose_threshold(probs, labels, positive_class=1, min_precision=0.9) is None
    assert caplog.messages == [
        "decision.min_precision=0.9: no threshold reaches it on the validation split (best precision "
        "0.6667); keeping argmax"
    ]
    assert caplog.records[0].levelno == logging.WARNING


def test_the_best_precision_said_is_the_best_of_every_real_threshold(caplog):
    """Tied at the top: the highest threshold's precision (1/2) is the best, the lowest's is 1/3."""
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 0])
    with caplog.at_level(logging.WARNING, logger="gpt_classifier.training.decision"):
        assert choose_threshold(probs, labels, positive_class=1, min_precision=0.9) is None
    assert "(best precision 0.5000)" in caplog.messages[0]
