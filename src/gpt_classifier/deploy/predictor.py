"""Classify new texts: `classify_review` as in the chapter, batched `predict_texts`, `load_predictor`
(a `.ckpt` in torch or an exported `.onnx` in ONNX Runtime, the same output).

Nothing here imports Lightning, Hydra or matplotlib: `python predict.py CKPT "text"` starts in about
a second, most of it importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import tiktoken
import torch
from torch import Tensor, nn

from gpt_classifier.data.encoding import pad_batch
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.data.windows import LongTexts
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)
    windows: int | None = None  # with data.long_texts=windows: how many windows of the text were read
    labels: list[str] | None = None  # several labels per text: those over their thresholds


class Classifier(Protocol):
    """What prediction needs of a classifier: a `TextClassifier` (torch) or an `OnnxClassifier`."""

    class_names: list[str]
    max_length: int | None
    context_length: int
    padding: str
    pad_token_id: int
    long_texts: LongTexts
    multi_label: bool

    def __call__(self, input_ids: Tensor, lengths: Tensor) -> Tensor: ...
    def probabilities(self, logits: Tensor) -> Tensor: ...
    def decide(self, probabilities: Tensor, threshold: float | None = None) -> Tensor: ...


def reading_for(classifier: Classifier, max_length: int | None) -> LongTexts:
    """How texts are read: as in training, or cut to another `max_length` (at most the context)."""
    if max_length is None:
        return classifier.long_texts
    return replace(classifier.long_texts, max_length=min(max_length, classifier.context_length))


def text_logits(
    sequences: list[list[Sequence[int]]], classifier: Classifier, reading: LongTexts, device, batch_size: int
) -> Tensor:
    """Logits `[texts, classes]`: every text's sequences (its windows) run in batches of similar
    length, padded as in training, then aggregated per text as training did."""
    rows = [(text, ids or [classifier.pad_token_id]) for text, seqs in enumerate(sequences) for ids in seqs]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))
    width = reading.max_length if classifier.padding == "max_length" else None
    row_logits: list[Tensor | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, lengths = pad_batch([rows[i][1] for i in chunk], classifier.pad_token_id, width)
        logits = classifier(input_ids.to(device), lengths.to(device)).float().cpu()
        for row, i in enumerate(chunk):
            row_logits[i] = logits[row]
    text_of = torch.tensor([text for text, _ in rows])
    return reading.aggregate_logits(torch.stack(row_logits), text_of, len(sequences))  # type: ignore[arg-type]


@torch.no_grad()
def predict_texts(
    texts: list[str],
    classifier: Classifier,
    tokenizer: tiktoken.Encoding | None = None,
    device: str | torch.device = "cpu",
    max_length: int | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
) -> list[Prediction]:
    """Label and probabilities per text, in input order; batched by similar length.

    The label is the argmax, or for two classes the classifier's decision threshold (`threshold`
    overrides it): the positive class when its probability is >= the threshold.

    Texts are read as in training (`LongTexts`: cut to `max_length`, head and tail, or windows whose
    logits are aggregated), tokenizing only what is read; `max_length` overrides the trained length.
    They are padded as in training: to `max_length` when it was trained that way (the book),
    otherwise only to the longest sequence of each batch.
    """
    if isinstance(classifier, nn.Module):
        classifier.eval().to(device)
    tokenizer = tokenizer or get_tokenizer()
    reading = reading_for(classifier, max_length)
    sequences = [reading.encode(tokenizer, text) for text in texts]
    probs = classifier.probabilities(text_logits(sequences, classifier, reading, device, batch_size))
    decided = classifier.decide(probs, threshold).tolist()
    names = classifier.class_names
    windows = [len(s) if reading.mode == "windows" else None for s in sequences]
    if classifier.multi_label:
        return [
            labelled(text, names, row_probs, chosen, windows[row])
            for row, (text, row_probs, chosen) in enumerate(zip(texts, probs.tolist(), decided, strict=True))
        ]
    return [
        Prediction(
            text,
            names[best],
            float(probs[row, best]),
            dict(zip(names, probs[row].tolist(), strict=True)),
            windows=windows[row],
        )
        for row, (text, best) in enumerate(zip(texts, decided, strict=True))
    ]


def labelled(
    text: str, names: list[str], probs: list[float], chosen: list[bool], windows: int | None
) -> Prediction:
    """Several labels per text: `labels` over their thresholds (`label` joins them with `|`, empty for
    none), `probability` the highest label probability."""
    labels = [name for name, keep in zip(names, chosen, strict=True) if keep]
    probabilities = dict(zip(names, probs, strict=True))
    return Prediction(text, "|".join(labels), max(probs), probabilities, windows=windows, labels=labels)


def classify_review(
    text: str,
    model: Classifier,
    tokenizer: tiktoken.Encoding,
    device: str | torch.device,
    max_length: int | None = None,
) -> str:
    """The chapter's function: the class name of one text ("spam" / "not spam" for SMS)."""
    return predict_texts([text], model, tokenizer, device, max_length)[0].label


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when there is one), `cpu`, `cuda`, `cuda:1`, `mps`...; one line if unusable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GPTClassifierError(f"--device {name!r} is unknown: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPTClassifierError(f"--device {name}: this torch sees no CUDA GPU; use --device cpu")
    return device


class Predictor:
    """Texts in, `Prediction`s out, for a `.ckpt` or an `.onnx` alike: what the CLI and a server use."""

    def __init__(self, classifier: Classifier, device: torch.device | str = "cpu") -> None:
        self.classifier = classifier
        self.device = device

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    def predict(
        self,
        texts: list[str],
        batch_size: int = 64,
        threshold: float | None = None,
        max_length: int | None = None,
    ) -> list[Prediction]:
        return predict_texts(
            texts, self.classifier, get_tokenizer(), self.device, max_length, batch_size, threshold
        )


def load_predictor(path: str | Path, device: str = "cpu") -> Predictor:
    """A `Predictor` for a trained checkpoint (`.ckpt`, torch) or an exported model (`.onnx`, ONNX
    Runtime: no torch model, and `onnxruntime` is imported only then)."""
    if Path(path).suffix.lower() == ".onnx":
        try:
            from gpt_classifier.deploy.onnx_runtime import OnnxClassifier
        except ImportError as err:
            raise GPTClassifierError(
                f"{path} is an ONNX model and {err.name} is not installed: pip install -e '.[export]'"
            ) from None
        return Predictor(OnnxClassifier.load(path, device))
    device = pick_device(device)
    return Predictor(load_classifier(path, map_location=device), device)
