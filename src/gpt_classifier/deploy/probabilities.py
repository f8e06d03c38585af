"""Softmax and the class decision in numpy: the ONNX path's twins of `Tensor.softmax` and
`model.classifier.decide`, so that an exported model predicts without torch (tested equal to them)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities `[B, classes]` in float32 from logits, stable for large logits."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True).astype(np.float32)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def decide(probabilities: np.ndarray, *, positive_class: int, threshold: float | None) -> np.ndarray:
    """The predicted class per row of `probabilities` `[B, classes]`: argmax, or for two classes with
    a threshold, `positive_class` when its probability is >= the threshold."""
    if threshold is None or probabilities.shape[-1] != 2:
        return probabilities.argmax(-1)
    positive = probabilities[:, positive_class] >= threshold
    return np.where(positive, positive_class, 1 - positive_class)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """A probability per label `[B, labels]` in float32 (several labels per text), stable both ways."""
    return np.exp(-np.logaddexp(0.0, -logits.astype(np.float32))).astype(np.float32)


def decide_labels(probabilities: np.ndarray, thresholds: list[float] | None) -> np.ndarray:
    """Several labels per text: `[B, labels]` true where a label's probability is >= its threshold
    (0.5 for every label when none were chosen)."""
    cut = np.asarray(thresholds or [0.5] * probabilities.shape[-1], dtype=probabilities.dtype)
    return probabilities >= cut


class Decision:
    """Probabilities from logits and the decision, for a scorer that has these settings (the ONNX
    model's metadata, or a `TextClassifier`'s): one label by softmax, or several by a sigmoid each."""

    class_names: list[str]
    positive_class: int
    threshold: float | None
    multi_label: bool
    thresholds: list[float] | None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits) if self.multi_label else softmax(logits)

    def decide(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """The class per row, or with several labels a 0/1 row of chosen labels; `threshold` overrides
        the model's own (for every label at once)."""
        if self.multi_label:
            thresholds = self.thresholds if threshold is None else [threshold] * len(self.class_names)
            return decide_labels(probabilities, thresholds)
        threshold = self.threshold if threshold is None else threshold
        return decide(probabilities, positive_class=self.positive_class, threshold=threshold)
