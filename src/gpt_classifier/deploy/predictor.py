"""Classify new texts: `classify_review` as in the chapter, batched `predict_texts`, `load_predictor`
(a `.ckpt` in torch or an exported `.onnx` in ONNX Runtime, the same output).

Nothing here imports Lightning, Hydra or matplotlib, nor torch: a `.ckpt` brings torch in through
`torch_backend.py`, an `.onnx` needs only ONNX Runtime, numpy and the tokenizer (the `onnx-serve`
extra), and `python predict.py model.onnx "text"` starts in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gpt_classifier.cpu_threads import choose_threads
from gpt_classifier.data.token_ids import encode_texts, pad_ids
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.errors import GPTClassifierError

if TYPE_CHECKING:
    import tiktoken

    from gpt_classifier.model.classifier import TextClassifier


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)


class Scorer(Protocol):
    """What prediction needs of a classifier: an `OnnxClassifier`, or a torch `TextClassifier` seen
    through `torch_backend.TorchScorer`. Token ids and lengths in, numpy probabilities out."""

    class_names: list[str]
    max_length: int | None
    context_length: int
    padding: str
    pad_token_id: int

    def probabilities(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...
    def decide(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray: ...


def as_scorer(classifier: Scorer | TextClassifier, device: Any = "cpu") -> Scorer:
    """The classifier itself when it computes numpy probabilities (ONNX), else its torch scorer."""
    if hasattr(classifier, "probabilities"):
        return classifier  # type: ignore[return-value]
    from gpt_classifier.deploy.torch_backend import TorchScorer

    return TorchScorer(classifier, device)  # type: ignore[arg-type]


def predict_texts(
    texts: list[str],
    classifier: Scorer | TextClassifier,
    tokenizer: tiktoken.Encoding | None = None,
    device: Any = "cpu",
    max_length: int | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
) -> list[Prediction]:
    """Label and probabilities per text, in input order; batched by similar length.

    The label is the argmax, or for two classes the classifier's decision threshold (`threshold`
    overrides it): the positive class when its probability is >= the threshold.

    Texts are truncated to `max_length` (default: the length the classifier was trained with). They
    are padded as in training: to `max_length` when it was trained that way (the book), otherwise
    only to the longest text of each batch. `device` (a torch device) applies to a torch classifier.
    """
    scorer = as_scorer(classifier, device)
    tokenizer = tokenizer or get_tokenizer()
    max_length = min(max_length or scorer.max_length or scorer.context_length, scorer.context_length)
    width = max_length if scorer.padding == "max_length" else None
    encoded = [ids or [scorer.pad_token_id] for ids in encode_texts(tokenizer, texts, max_length)]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: list[Prediction | None] = [None] * len(texts)
    names = scorer.class_names
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, lengths = pad_ids([encoded[i] for i in chunk], scorer.pad_token_id, width)
        probs = scorer.probabilities(input_ids, lengths)
        decided = scorer.decide(probs, threshold).tolist()
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
    model: Scorer | TextClassifier,
    tokenizer: tiktoken.Encoding,
    device: Any,
    max_length: int | None = None,
) -> str:
    """The chapter's function: the class name of one text ("spam" / "not spam" for SMS)."""
    return predict_texts([text], model, tokenizer, device, max_length)[0].label


class Predictor:
    """Texts in, `Prediction`s out, for a `.ckpt` or an `.onnx` alike: what the CLI and a server use."""

    def __init__(self, classifier: Scorer | TextClassifier, device: Any = "cpu") -> None:
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


def load_predictor(path: str | Path, device: str = "cpu", threads: int | None = None) -> Predictor:
    """A `Predictor` for a trained checkpoint (`.ckpt`, torch) or an exported model (`.onnx`, ONNX
    Runtime: torch is never imported, `onnxruntime` only then). `threads` caps the intra-op threads
    (several server processes share the cores); default: the library's own, every core."""
    if Path(path).suffix.lower() == ".onnx":
        try:
            from gpt_classifier.deploy.onnx_runtime import OnnxClassifier
        except ImportError as err:
            raise GPTClassifierError(
                f"{path} is an ONNX model and {err.name} is not installed: "
                "pip install -e '.[onnx-serve]' (or '.[export]')"
            ) from None
        return Predictor(OnnxClassifier.load(path, device, choose_threads(threads)[0]))
    try:
        from gpt_classifier.deploy import torch_backend
    except ImportError as err:
        raise GPTClassifierError(
            f"{path} is a checkpoint and {err.name} is not installed: a .ckpt needs the train extra "
            "(pip install -e '.[train]'); without torch, predict and serve an exported .onnx"
        ) from None
    picked = torch_backend.pick_device(device)
    return Predictor(torch_backend.load_torch_classifier(path, picked, threads), picked)
