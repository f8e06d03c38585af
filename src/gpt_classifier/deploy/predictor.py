"""Classify new texts: `classify_review` as in the chapter, batched `predict_texts`, `load_predictor`
(a `.ckpt` in torch or an exported `.onnx` in ONNX Runtime, the same output).

Nothing here imports Lightning, Hydra or matplotlib: `python predict.py CKPT "text"` starts in about
a second, most of it importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import tiktoken
import torch
from torch import Tensor, nn

from gpt_classifier.cpu_threads import apply_threads
from gpt_classifier.data.encoding import encode_texts, pad_batch
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)


class Classifier(Protocol):
    """What prediction needs of a classifier: a `TextClassifier` (torch) or an `OnnxClassifier`."""

    class_names: list[str]
    max_length: int | None
    context_length: int
    padding: str
    pad_token_id: int

    def __call__(self, input_ids: Tensor, lengths: Tensor) -> Tensor: ...
    def decide(self, probabilities: Tensor, threshold: float | None = None) -> Tensor: ...


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

    Texts are truncated to `max_length` (default: the length the classifier was trained with). They
    are padded as in training: to `max_length` when it was trained that way (the book), otherwise
    only to the longest text of each batch.
    """
    if isinstance(classifier, nn.Module):
        classifier.eval().to(device)
    tokenizer = tokenizer or get_tokenizer()
    max_length = min(
        max_length or classifier.max_length or classifier.context_length, classifier.context_length
    )
    width = max_length if classifier.padding == "max_length" else None
    encoded = [ids or [classifier.pad_token_id] for ids in encode_texts(tokenizer, texts, max_length)]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: list[Prediction | None] = [None] * len(texts)
    names = classifier.class_names
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, lengths = pad_batch([encoded[i] for i in chunk], classifier.pad_token_id, width)
        probs = classifier(input_ids.to(device), lengths.to(device)).softmax(-1).float().cpu()
        decided = classifier.decide(probs, threshold).tolist()
        for row, i in enumerate(chunk):
            best = decided[row]
            results[i] = Prediction(
                texts[i],
                names[best],
                float(probs[row, best]),
                dict(zip(names, probs[row].tolist(), strict=True)),
            )
    return results  # type: ignore[return-value]


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
    apply_threads()
    return Predictor(load_classifier(path, map_location=device), device)
