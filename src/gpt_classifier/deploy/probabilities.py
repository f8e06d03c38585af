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
