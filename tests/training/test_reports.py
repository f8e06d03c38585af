"""`per_class_report` against scikit-learn's `precision_recall_fscore_support` on fixed confusion
matrices (empty rows and columns included) and on random ones (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import precision_recall_fscore_support

from gpt_classifier.training.reports import per_class_report

CONFUSIONS = {
    "book-like": [[140, 9], [12, 138]],
    "three classes": [[5, 2, 0], [1, 7, 3], [0, 4, 6]],
    "a class never predicted": [[4, 0, 1], [3, 0, 2], [1, 0, 5]],  # precision 0 by convention
    "a class never true": [[4, 2, 0], [0, 0, 0], [1, 1, 3]],  # recall 0, support 0
    "one class only right": [[0, 3], [0, 5]],
    "a class seen and predicted once": [[1, 0, 0], [0, 5, 2], [0, 1, 3]],  # precision, recall 1/1
    "a class predicted once, wrongly": [[4, 1], [0, 3]],
    "perfect": [[3, 0], [0, 4]],
    "empty": [[0, 0], [0, 0]],
}


def sklearn_report(confusion: list[list[int]]) -> np.ndarray:
    """(precision, recall, F1, support) per class, from the labels a confusion matrix counts."""
    matrix = np.array(confusion)
    true, predicted = [], []
    for (row, column), count in np.ndenumerate(matrix):
        true += [row] * count
        predicted += [column] * count
    labels = list(range(len(matrix)))
    return np.array(precision_recall_fscore_support(true, predicted, labels=labels, zero_division=0.0)).T


def assert_matches_sklearn(confusion: list[list[int]]) -> None:
    names = [f"class {i}" for i in range(len(confusion))]
    report = per_class_report(torch.tensor(confusion), names)
    assert list(report) == names
    empty = sum(map(sum, confusion)) == 0  # scikit-learn refuses empty inputs: all zero then
    want = np.zeros((len(names), 4)) if empty else sklearn_report(confusion)
    for name, (precision, recall, f1, support) in zip(names, want, strict=True):
        row = report[name]
        assert row["support"] == support and isinstance(row["support"], int)
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx(
            [precision, recall, f1], abs=1e-12
        ), name


@pytest.mark.parametrize("confusion", CONFUSIONS.values(), ids=CONFUSIONS.keys())
def test_per_class_report_equals_scikit_learn(confusion):
    assert_matches_sklearn(confusion)


def test_per_class_report_by_hand():
    """Class 0 of [[5, 2], [3, 10]]: precision 5/8, recall 5/7, F1 2pr/(p+r) = 2/3."""
    report = per_class_report(torch.tensor([[5, 2], [3, 10]]), ["a", "b"])
    assert report["a"] == pytest.approx({"precision": 5 / 8, "recall": 5 / 7, "f1": 2 / 3, "support": 7})
    assert report["b"] == pytest.approx({"precision": 10 / 12, "recall": 10 / 13, "f1": 0.8, "support": 13})


def test_class_names_must_match_the_matrix():
    with pytest.raises(ValueError):
        per_class_report(torch.eye(3, dtype=torch.long), ["a", "b"])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=4).flatmap(
        lambda n: st.lists(
            st.lists(st.integers(min_value=0, max_value=3) | st.integers(0, 50), min_size=n, max_size=n),
            min_size=n,
            max_size=n,
        )
    )
)
def test_per_class_report_equals_scikit_learn_on_any_confusion(confusion):
    assert_matches_sklearn(confusion)
