"""Calibrated probabilities: temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural
Networks") fitted on the validation split after training, its before/after scores, the reliability diagram.

One number T divides every logit before softmax: it minimises the validation negative log-likelihood,
so over-confident models (T > 1) are softened and the argmax never changes. Plain tensors in, numbers
out; no Lightning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.training.decision import ECE_BINS

log = logging.getLogger(__name__)

METHODS = ("none", "temperature")
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e2  # a fit outside says the validation split is degenerate


def check_method(method: str) -> None:
    if method not in METHODS:
        raise GPTClassifierError(f"calibration.method={method!r} is unknown: use {' or '.join(METHODS)}")


def fit_temperature(logits: Tensor, labels: Tensor, *, max_iter: int = 100) -> float:
    """The T minimising the mean NLL of `softmax(logits / T)` (LBFGS on log T, so T stays positive).

    Gradients are switched on here: Lightning's evaluation loops run in inference mode."""
    with torch.inference_mode(False), torch.enable_grad():
        logits, labels = logits.detach().clone().double(), labels.clone().long()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
    return float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))


def calibration_scores(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Expected calibration error (15 bins, top label) and mean negative log-likelihood of `logits`."""
    logits, labels = logits.float(), labels.long()
    ece = multiclass_calibration_error(logits.softmax(-1), labels, logits.shape[1], n_bins=ECE_BINS)
    return {"ece": float(ece), "nll": float(F.cross_entropy(logits, labels))}


def calibrate(
    outputs: dict[str, tuple[Tensor, Tensor]], method: str, *, temperature: float = 1.0
) -> tuple[float, dict[str, tuple[Tensor, Tensor]], dict[str, float]]:
    """The temperature of the uncalibrated logits in `outputs` (split: (logits, labels)): fitted on
    `validation` with `method="temperature"`, else the given one (a checkpoint's own).

    Returns it, every split's logits divided by it, and the test split's ECE and NLL before and after
    (empty without a test split or with temperature 1).
    """
    check_method(method)
    if method == "temperature" and "validation" in outputs:
        temperature = fit_temperature(*outputs["validation"])
    if temperature == 1.0:
        return 1.0, outputs, {}
    scaled = {split: (logits / temperature, labels) for split, (logits, labels) in outputs.items()}
    report: dict[str, float] = {}
    if "test" in outputs:
        before, after = calibration_scores(*outputs["test"]), calibration_scores(*scaled["test"])
        report = {
            f"{key}_{when}": scores[key]
            for key in ("ece", "nll")
            for when, scores in (("before", before), ("after", after))
        }
        log.info(
            "temperature %.3f (%s): test ECE %.4f -> %.4f, NLL %.4f -> %.4f",
            temperature,
            "fitted on the validation NLL" if method == "temperature" else "the checkpoint's",
            report["ece_before"],
            report["ece_after"],
            report["nll_before"],
            report["nll_after"],
        )
    return temperature, scaled, report


def reliability_bins(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> tuple[list, list, list]:
    """Per confidence bin (top label): mean confidence, accuracy and count; empty bins left out."""
    confidence, predicted = probs.float().max(-1)
    correct = (predicted == labels).float()
    index = (confidence * bins).long().clamp(max=bins - 1)
    counts = torch.bincount(index, minlength=bins)
    kept = counts > 0
    mean_confidence = torch.bincount(index, confidence, minlength=bins)[kept] / counts[kept]
    accuracy = torch.bincount(index, correct, minlength=bins)[kept] / counts[kept]
    return mean_confidence.tolist(), accuracy.tolist(), counts[kept].tolist()


def plot_reliability(
    before: Tensor, after: Tensor, labels: Tensor, temperature: float, out_dir: Path
) -> Path:
    """`reliability.png`: accuracy against confidence on the test split, before and after calibration."""
    from gpt_classifier.training.reports import pyplot, save_atomic

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for probs, name, marker in ((before, "before", "o"), (after, f"after (T={temperature:.2f})", "s")):
        confidence, accuracy, counts = reliability_bins(probs, labels)
        ece = calibration_scores(probs.clamp_min(1e-12).log(), labels)["ece"]
        (line,) = ax.plot(confidence, accuracy, alpha=0.5, label=f"{name}: ECE {ece:.3f}")
        sizes = [12 + 200 * count / len(labels) for count in counts]  # a bin's share of the texts
        ax.scatter(confidence, accuracy, s=sizes, marker=marker, color=line.get_color())
    ax.set_xlabel("Confidence (top class probability)\nmarker area: share of the texts in the bin")
    ax.set_ylabel("Accuracy")
    ax.set_title("Reliability, test split")
    ax.legend()
    fig.tight_layout()
    path = save_atomic(fig, out_dir / "reliability.png")
    plt.close(fig)
    return path
