"""Several labels per text: the loss's `pos_weight`, a threshold per label, and the per-label report.
Plain tensors in, numbers out (torchmetrics' functional API); no Lightning.

A text has label k when its sigmoid probability for k is >= the label's threshold
(`TextClassifier.decide`). Thresholds are chosen on the validation split: the best F1 per label, or
with `decision.min_precision` the lowest threshold reaching that precision for the label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_precision_recall_curve

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import TextClassifier
from gpt_classifier.training.decision import pick_threshold
from gpt_classifier.training.reports import pyplot

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


def pos_weight(setting: str | Sequence[float] | None, labels: Tensor, names: Sequence[str]) -> Tensor | None:
    """`BCEWithLogitsLoss`'s `pos_weight`: None, `balanced` (negatives / positives per label, from
    the train split), or one weight per label."""
    if setting is None:
        return None
    if setting == "balanced":
        positives = labels.sum(0)
        if (positives == 0).any():
            missing = [name for name, n in zip(names, positives.tolist(), strict=True) if n == 0]
            raise GPTClassifierError(
                f"loss.class_weights=balanced: labels {missing} have no training example; pass a list"
            )
        return ((len(labels) - positives) / positives).double()
    if isinstance(setting, str) or len(setting) != len(names) or any(float(w) < 0 for w in setting):
        raise GPTClassifierError(
            f"loss.class_weights={setting!r} must be null, balanced, or {len(names)} non-negative numbers"
        )
    return torch.tensor([float(w) for w in setting], dtype=torch.float64)


def best_f1_threshold(probs: Tensor, target: Tensor) -> float:
    """The threshold with the best F1 for one label (0.5 when the label never occurs)."""
    if not target.any():
        return DEFAULT_THRESHOLD
    precision, recall, thresholds = binary_precision_recall_curve(probs.float(), target.long())
    f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]).clamp(min=1e-12)
    return float(thresholds[int(f1.argmax())])


def choose_thresholds(
    probs: Tensor, labels: Tensor, names: Sequence[str], min_precision: float | None
) -> list[float]:
    """One threshold per label on (validation) `probs` `[N, labels]`, logged."""
    chosen = []
    for k, name in enumerate(names):
        target = labels[:, k].bool()
        threshold = best_f1_threshold(probs[:, k], target) if min_precision is None else None
        if min_precision is not None and target.any():
            threshold = pick_threshold(probs[:, k], target, min_precision)
            if threshold is None:
                log.warning(
                    "label %s: no threshold reaches decision.min_precision=%s on validation; keeping 0.5",
                    name,
                    min_precision,
                )
        chosen.append(DEFAULT_THRESHOLD if threshold is None else threshold)
    listed = ", ".join(f"{name} {t:.4f}" for name, t in zip(names, chosen, strict=True))
    log.info("thresholds per label (on validation): %s", listed)
    return chosen


def f1_of(hits: Tensor, predicted: Tensor, actual: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, hits / actual.clamp(min=1), 0.0)
    both = (precision + recall).clamp(min=1e-12)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / both, 0.0)
    return precision, recall, f1


def multilabel_report(probs: Tensor, labels: Tensor, decided: Tensor, names: Sequence[str]) -> dict:
    """Per label precision / recall / F1 / support / ROC AUC, and micro and macro F1 and subset
    accuracy (every label of a text right), from probabilities, 0/1 labels and decisions `[N, labels]`."""
    truth, decided = labels.bool(), decided.bool()
    hits = (truth & decided).sum(0).double()
    precision, recall, f1 = f1_of(hits, decided.sum(0).double(), truth.sum(0).double())
    report: dict = {}
    for k, name in enumerate(names):
        has_both = bool(truth[:, k].any() and (~truth[:, k]).any())
        auc = float(binary_auroc(probs[:, k].float(), truth[:, k].long())) if has_both else None
        report[name] = {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(truth[:, k].sum()),
            "roc_auc": auc,
        }
    micro = f1_of(hits.sum(), decided.sum().double(), truth.sum().double())[2]
    report["micro_f1"] = float(micro)
    report["macro_f1"] = float(f1.mean())
    report["subset_accuracy"] = float((decided == truth).all(1).double().mean())
    return report


def multilabel_results(
    outputs: dict[str, tuple[Tensor, Tensor]], classifier: TextClassifier, decision: dict | None
) -> dict[str, dict]:
    """The final evaluation's per-split reports; first the classifier's thresholds when training
    (`decision` given): `decision.threshold` for every label, else chosen on the validation split."""
    names = classifier.class_names
    fixed = (decision or {}).get("threshold")
    if fixed is not None:
        classifier.thresholds = [float(fixed)] * len(names)
    elif decision is not None and "validation" in outputs:
        probs, labels = outputs["validation"]
        classifier.thresholds = choose_thresholds(probs, labels, names, decision.get("min_precision"))
    return {
        split: multilabel_report(probs, labels, classifier.decide(probs), names)
        for split, (probs, labels) in outputs.items()
    }


def plot_per_label(report: dict, names: Sequence[str], out_dir: Path) -> tuple[Path, object]:
    """`per_label.png`: precision, recall and F1 of every label as grouped bars (the multi-label
    counterpart of the confusion matrix); the path and the figure (closed by the caller)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.5))
    width = 0.27
    for shift, metric in enumerate(("precision", "recall", "f1")):
        xs = [i + (shift - 1) * width for i in range(len(names))]
        axis.bar(xs, [report[name][metric] for name in names], width, label=metric)
    axis.set_xticks(range(len(names)), [f"{n}\n({report[n]['support']})" for n in names])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("test split")
    axis.set_title(f"per label (micro F1 {report['micro_f1']:.3f}, macro F1 {report['macro_f1']:.3f})")
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    path = out_dir / "per_label.png"
    figure.savefig(path, dpi=120)
    return path, figure
