"""The end of the final evaluation: from every split's logits to the run's numbers.

One label per text: the temperature (fitted on the validation split with `calibration=temperature`,
or the checkpoint's own), the decision threshold (picked on the calibrated validation probabilities
when `decision.min_precision` is set), accuracy per split with that threshold, and the test split's
per-class report and scores. Several labels: a sigmoid per label, thresholds per label, subset
accuracy and the per-label report. `module` is the `GPTClassifier` whose test loop just ended.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from gpt_classifier.data.datamodule import SPLITS
from gpt_classifier.training.calibration import calibrate
from gpt_classifier.training.decision import choose_threshold, scores
from gpt_classifier.training.multilabel import multilabel_results
from gpt_classifier.training.reports import per_class_report

SHORT_NAMES = {"train": "train", "validation": "val", "test": "test"}  # as in the book's printouts


def finish(module: Any) -> None:
    """Fill `module.final_metrics`, `test_outputs`, `test_report` and `test_scores`."""
    logits = collected_logits(module)
    if module.multi_label:  # a sigmoid per label: no temperature is fitted
        module.classifier.temperature = module.loaded_temperature
        finish_multilabel(module, {s: (values.sigmoid(), labels) for s, (values, labels) in logits.items()})
    else:
        finish_single_label(module, logits)


def collected_logits(module: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """(logits, labels) of each evaluated split, and its loss into `final_metrics`."""
    logits = {}
    for split in SPLITS:
        stage = f"final_{SHORT_NAMES[split]}"
        if module.mean_loss[stage].update_count:
            split_logits = module.final_logits[stage].compute().view(-1, len(module.class_names)).cpu()
            labels = module.final_labels[stage].compute().long().cpu()
            labels = labels.view(len(split_logits), -1) if module.multi_label else labels
            logits[split] = (split_logits, labels)
            module.final_metrics[f"{SHORT_NAMES[split]}_loss"] = float(module.mean_loss[stage].compute())
    return logits


def finish_single_label(module: Any, logits: dict[str, tuple[Tensor, Tensor]]) -> None:
    classifier = module.classifier
    if "test" in logits:
        module.uncalibrated_test_probs = logits["test"][0].softmax(-1)
    method = module.hparams["calibration"]["method"]
    temperature, logits, module.calibration_report = calibrate(
        logits, method, temperature=module.loaded_temperature
    )
    classifier.temperature = temperature
    outputs = {split: (values.softmax(-1), labels) for split, (values, labels) in logits.items()}
    min_precision = (module.decision or {}).get("min_precision")
    if min_precision is not None and "validation" in outputs:
        classifier.threshold = choose_threshold(
            *outputs["validation"], classifier.positive_class, min_precision
        )
    for split, (probs, labels) in outputs.items():
        accuracy = float((classifier.decide(probs) == labels).float().mean())
        module.final_metrics[f"{SHORT_NAMES[split]}_acc"] = accuracy
        module.log(f"final/{SHORT_NAMES[split]}_acc", accuracy)
    if "test" in outputs:
        probs, labels = module.test_outputs = outputs["test"]
        module.confusion.update(classifier.decide(probs).to(module.device), labels.to(module.device))
        module.test_report = per_class_report(module.confusion.compute().cpu(), module.class_names)
        module.test_scores = scores(probs, labels, classifier.positive_class, classifier.threshold)


def finish_multilabel(module: Any, outputs: dict[str, tuple[Tensor, Tensor]]) -> None:
    """Thresholds (training only), subset accuracy per split, the test report."""
    reports = multilabel_results(outputs, module.classifier, module.decision)
    for split, report in reports.items():
        module.final_metrics[f"{SHORT_NAMES[split]}_acc"] = report["subset_accuracy"]
        for key in ("subset_accuracy", "micro_f1", "macro_f1"):
            module.log(f"final/{SHORT_NAMES[split]}_{key}", report[key])
    if "test" in outputs:
        module.test_outputs, module.test_report = outputs["test"], reports["test"]
