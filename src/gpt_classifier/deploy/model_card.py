"""A model card with every export: the Hugging Face format (YAML header with `pipeline_tag`, labels
and the run's metrics as `model-index`, then Markdown), parsed back by `huggingface_hub.ModelCard`.

A model that leaves the project should say what it is: the base model and weights, the data and split,
what was trained, how a text is read, the threshold and calibration, the test metrics (from the run's
`metrics.json` and `classification_report.json`, beside `checkpoints/`), how to load it, its limits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from gpt_classifier.atomic_files import write_text_atomic
from gpt_classifier.model.checkpoint import read_hyper_parameters
from gpt_classifier.model.classifier import TextClassifier

READINGS = {
    "last": "the last position of the padded sequence (the book's choice: with padding, that is a pad "
    "token, the padding pitfall of LLMs-from-scratch #566)",
    "first": "the first token",
    "flexible": "the last real token of each text (not a pad token)",
}


def run_results(checkpoint: str | Path) -> dict[str, Any]:
    """`metrics.json` and `classification_report.json` of the run that wrote `checkpoint` (its
    folder is `<run>/checkpoints/`); empty when the files are not there."""
    run_dir = Path(checkpoint).resolve().parent.parent
    results: dict[str, Any] = {}
    for name in ("metrics", "classification_report"):
        path = run_dir / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.is_file() else {}
    return results


def eval_results(name: str, dataset: str, metrics: dict, report: dict) -> list[EvalResult]:
    """The run's split accuracies, test loss and test ranking/calibration scores as `model-index`."""
    found = {f"{split} accuracy": metrics.get(f"{short}_acc") for split, short in SPLIT_NAMES.items()}
    found["test loss"] = metrics.get("test_loss")
    found.update({f"test {key}": report.get(key) for key in ("roc_auc", "average_precision", "ece")})
    return [
        EvalResult(
            task_type="text-classification",
            dataset_type=name,
            dataset_name=dataset,
            dataset_split=label.split()[0],
            metric_type=label.split(maxsplit=1)[1].replace(" ", "_"),
            metric_name=label,
            metric_value=value,
        )
        for label, value in found.items()
        if value is not None
    ]


SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}


def card_text(classifier: TextClassifier, checkpoint: str | Path, *, usage: str) -> str:
    """The card: YAML header and Markdown body; `usage` is the export's own how-to-load section."""
    hparams = read_hyper_parameters(checkpoint)
    model, finetune = hparams.get("model") or {}, hparams.get("finetune") or {}
    data = hparams.get("data") or {}
    dataset = (data.get("dataset") or {}).get("about", "not recorded in the checkpoint")
    rows = (data.get("dataset") or {}).get("rows") or {}
    results = run_results(checkpoint)
    metrics, report = results["metrics"], results["classification_report"]
    name = Path(checkpoint).resolve().parent.parent.name or "gpt-classifier"
    card_data = ModelCardData(
        model_name=name,
        pipeline_tag="text-classification",
        library_name="transformers",
        tags=["gpt2", "text-classification", "gpt-classifier"],
        eval_results=eval_results("gpt-classifier", dataset, metrics, report) or None,
        labels=list(classifier.class_names),
    )
    body = card_body(classifier, model, finetune, dataset, rows, metrics, report)
    return f"---\n{card_data.to_yaml()}\n---\n\n{body}\n{usage}\n{limitations(classifier)}"


def card_body(classifier, model, finetune, dataset, rows, metrics, report) -> str:
    reading = classifier.reading
    read = "the mean over the real tokens" if reading.pooling == "mean" else READINGS[reading.position]
    threshold = classifier.threshold
    positive = classifier.class_names[classifier.positive_class]
    decision = (
        "argmax of the probabilities"
        if threshold is None
        else f"'{positive}' when its probability is >= {threshold:.4f}"
    )
    split = ", ".join(f"{split} {count:,}" for split, count in rows.items()) or "not recorded"
    calibration = report
    lines = [
        f"# Text classifier: {', '.join(classifier.class_names)} (GPT-2 architecture, gpt-classifier)",
        "",
        "## Model",
        f"- Base model: `{model.get('name', '?')}` with weights `{model.get('weights', '?')}`, "
        f"{classifier.model.cfg.n_layers} blocks, width {classifier.model.cfg.emb_dim}.",
        f"- Trained: finetune policy `{finetune.get('policy', 'last_block')}` (the rest frozen).",
        f"- Reads {read}; texts padded `{classifier.padding}` with token {classifier.pad_token_id}.",
        f"- Decision: {decision}.",
        f"- Calibration: temperature {classifier.temperature:.4f} (logits / T before softmax; 1: none), "
        "fitted on the validation split; the probabilities it reports (and every export's) are calibrated.",
        "",
        "## Data",
        f"- {dataset}",
        f"- Split (texts): {split}.",
        "",
        "## Results (the run's best checkpoint)",
        "",
        "| split | accuracy |",
        "|---|---|",
        *(
            f"| {split} | {100 * metrics[f'{short}_acc']:.2f}% |"
            for split, short in SPLIT_NAMES.items()
            if f"{short}_acc" in metrics
        ),
        "",
    ]
    if calibration.get("ece_before") is not None:
        lines.append(
            f"Test ECE {calibration['ece_before']:.4f} before calibration, {calibration['ece_after']:.4f} "
            f"after; test NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}.\n"
        )
    if not metrics:
        lines.append("No metrics.json was found beside the checkpoint's run folder.\n")
    return "\n".join(lines)


def limitations(classifier: TextClassifier) -> str:
    max_length = min(classifier.max_length or classifier.context_length, classifier.context_length)
    return (
        "## Limitations\n"
        f"- Texts are truncated to {max_length} tokens (GPT-2's BPE); what comes after is not read.\n"
        f"- It knows only the classes {', '.join(classifier.class_names)}: every text gets one of them.\n"
        "- Its numbers hold for texts like its training data; measure it on yours before relying on it.\n"
    )


def hf_usage(folder: str) -> str:
    return (
        "## How to use\n\n```python\nfrom transformers import pipeline\n\n"
        f'classify = pipeline("text-classification", model="{folder}")\n'
        'print(classify("Hey, are we still on for dinner tonight?", top_k=None, truncation=True))\n```\n'
    )


def onnx_usage(path: str) -> str:
    return (
        "## How to use\n\n"
        f'`python predict.py {path} "some text"` or `python serve.py {path}`; in ONNX Runtime the inputs '
        "are `input_ids` and `attention_mask` (int64, padded at the end), the output `logits` (already "
        "divided by the temperature).\n"
    )


def write_card(text: str, path: Path) -> Path:
    """Save the card atomically, after checking that `huggingface_hub` parses it."""
    write_text_atomic(str(ModelCard(text)), path)
    return path
