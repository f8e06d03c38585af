"""Imbalanced classes and operating points: class weights, the decision threshold, ranking and
calibration scores. Plain tensors in, numbers out (torchmetrics' functional API); no Lightning.

A text is positive when its positive-class probability is >= the threshold (`TextClassifier.decide`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_calibration_error,
)

from gpt_classifier.errors import GPTClassifierError

log = logging.getLogger(__name__)

ECE_BINS = 15
ARGMAX_THRESHOLD = 0.5  # what argmax is for two classes, as metrics.json reports it


def class_weights(
    setting: str | Sequence[float] | None, labels: Sequence[int], num_classes: int
) -> Tensor | None:
    """Cross-entropy class weights: None (the book), `balanced` (n / (classes * count), as scikit-learn's
    `compute_class_weight`), or one weight per class."""
    if setting is None:
        return None
    if setting == "balanced":
        counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes)
        if (counts == 0).any():
            missing = [i for i, n in enumerate(counts.tolist()) if n == 0]
            raise GPTClassifierError(
                f"loss.class_weights=balanced: classes {missing} have no training example; pass a list"
            )
        return counts.sum() / (num_classes * counts.double())
    if isinstance(setting, str) or len(setting) != num_classes or any(float(w) < 0 for w in setting):
        raise GPTClassifierError(
            f"loss.class_weights={setting!r} must be null, balanced, or {num_classes} non-negative numbers"
        )
    return torch.tensor([float(w) for w in setting], dtype=torch.float64)


def positive_index(class_names: Sequence[str], positive_class: str | None) -> int:
    """The positive class's index: the named one, else the second (of two) / last class."""
    if positive_class is None:
        return len(class_names) - 1
    names = [str(name) for name in class_names]
    if str(positive_class) not in names:
        raise GPTClassifierError(
            f"data.positive_class={positive_class!r} is not a class: use one of {', '.join(names)}"
        )
    return names.index(str(positive_class))


def pick_threshold(positive_probs: Tensor, is_positive: Tensor, min_precision: float) -> float | None:
    """The lowest threshold whose precision (positive when probability >= it) is >= `min_precision`,
    or None when no threshold reaches it."""
    precision, _, thresholds = binary_precision_recall_curve(positive_probs.float(), is_positive.long())
    reached = precision[:-1] >= min_precision  # the last point is "nothing predicted" (precision 1)
    if not reached.any():
        return None
    return float(thresholds[reached].min())


def precision_recall_at(positive_probs: Tensor, is_positive: Tensor, threshold: float) -> tuple[float, float]:
    predicted = positive_probs >= threshold
    hits = (predicted & is_positive.bool()).sum().item()
    precision = hits / predicted.sum().item() if predicted.any() else 0.0
    recall = hits / is_positive.sum().item() if is_positive.any() else 0.0
    return precision, recall


def scores(probs: Tensor, labels: Tensor, positive_class: int, threshold: float | None) -> dict[str, float]:
    """ROC AUC and average precision (two classes: of the positive class; more: macro one-vs-rest),
    expected calibration error (15 bins, top-label), and for two classes precision and recall of the
    positive class at the threshold (argmax: 0.5)."""
    probs, labels = probs.float(), labels.long()
    num_classes = probs.shape[1]
    result: dict[str, float] = {}
    if num_classes == 2:
        positive, target = probs[:, positive_class], (labels == positive_class).long()
        result["roc_auc"] = float(binary_auroc(positive, target))
        result["average_precision"] = float(binary_average_precision(positive, target))
    else:
        result["roc_auc"] = float(multiclass_auroc(probs, labels, num_classes, average="macro"))
        result["average_precision"] = float(
            multiclass_average_precision(probs, labels, num_classes, average="macro")
        )
    result["ece"] = float(multiclass_calibration_error(probs, labels, num_classes, n_bins=ECE_BINS))
    if num_classes == 2:
        at = ARGMAX_THRESHOLD if threshold is None else threshold
        precision, recall = precision_recall_at(positive, target, at)
        result.update(threshold=at, precision=precision, recall=recall)
    return result


def check_settings(decision: dict, num_classes: int) -> None:
    """Fail before training on decision settings that cannot work."""
    fixed, min_precision = decision.get("threshold"), decision.get("min_precision")
    if fixed is None and min_precision is None:
        return
    if num_classes != 2:
        raise GPTClassifierError(f"decision.* needs two classes, not {num_classes}: drop it (argmax)")
    if fixed is not None and min_precision is not None:
        raise GPTClassifierError("pass decision.threshold or decision.min_precision, not both")
    if fixed is not None and not 0 <= fixed <= 1:
        raise GPTClassifierError(f"decision.threshold={fixed} must be a probability in [0, 1]")
    if min_precision is not None and not 0 < min_precision <= 1:
        raise GPTClassifierError(f"decision.min_precision={min_precision} must be in (0, 1]")


def choose_threshold(
    probs: Tensor, labels: Tensor, positive_class: int, min_precision: float
) -> float | None:
    """The threshold picked on (validation) `probs` to reach `min_precision`, or None (argmax), said
    in the log, when no threshold reaches it."""
    positive, target = probs[:, positive_class], labels == positive_class
    threshold = pick_threshold(positive, target, min_precision)
    if threshold is None:
        best = float(binary_precision_recall_curve(positive.float(), target.long())[0][:-1].max())
        log.warning(
            "decision.min_precision=%s: no threshold reaches it on the validation split (best precision "
            "%.4f); keeping argmax",
            min_precision,
            best,
        )
    else:
        precision, recall = precision_recall_at(positive, target, threshold)
        log.info(
            "decision threshold %.4f: validation precision %.4f, recall %.4f (decision.min_precision=%s)",
            threshold,
            precision,
            recall,
            min_precision,
        )
    return threshold
