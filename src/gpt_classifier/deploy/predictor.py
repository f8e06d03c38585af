"""Classify new texts: `classify_review` as in the chapter, batched `predict_texts`, `load_predictor`
(a `.ckpt` in torch or an exported `.onnx` in ONNX Runtime, the same output).

Nothing here imports Lightning, Hydra or matplotlib, nor torch: a `.ckpt` brings torch in through
`torch_backend.py`, an `.onnx` needs only ONNX Runtime, numpy and the tokenizer (the `onnx-serve`
extra), and `python predict.py model.onnx "text"` starts in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gpt_classifier.cpu_threads import choose_threads
from gpt_classifier.data.long_texts import LongTexts, aggregate_rows
from gpt_classifier.data.token_ids import pad_ids
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
    windows: int | None = None  # with data.long_texts=windows: how many windows of the text were read
    labels: list[str] | None = None  # several labels per text: those over their thresholds


class Scorer(Protocol):
    """What prediction needs of a classifier: an `OnnxClassifier`, or a torch `TextClassifier` seen
    through `torch_backend.TorchScorer`. Token ids and lengths in, numpy logits out."""

    class_names: list[str]
    max_length: int | None
    context_length: int
    padding: str
    pad_token_id: int
    long_texts: LongTexts
    multi_label: bool

    def logits(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...
    def probabilities(self, logits: np.ndarray) -> np.ndarray: ...
    def decide(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray: ...


def as_scorer(classifier: Scorer | TextClassifier, device: Any = "cpu") -> Scorer:
    """The classifier itself when it computes numpy logits (ONNX), else its torch scorer."""
    if hasattr(classifier, "logits"):
        return classifier  # type: ignore[return-value]
    from gpt_classifier.deploy.torch_backend import TorchScorer

    return TorchScorer(classifier, device)  # type: ignore[arg-type]


def reading_for(scorer: Scorer, max_length: int | None) -> LongTexts:
    """How texts are read: as in training, or cut to another `max_length` (at most the context)."""
    if max_length is None:
        return scorer.long_texts
    return replace(scorer.long_texts, max_length=min(max_length, scorer.context_length))


def text_logits(
    sequences: list[list[Sequence[int]]], scorer: Scorer, reading: LongTexts, batch_size: int
) -> np.ndarray:
    """Logits `[texts, classes]`: every text's sequences (its windows) run in batches of similar
    length, padded as in training, then aggregated per text as training did."""
    rows = [(text, ids or [scorer.pad_token_id]) for text, seqs in enumerate(sequences) for ids in seqs]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))
    width = reading.max_length if scorer.padding == "max_length" else None
    row_logits: list[np.ndarray | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, lengths = pad_ids([rows[i][1] for i in chunk], scorer.pad_token_id, width)
        for row, logits in zip(chunk, scorer.logits(input_ids, lengths).astype(np.float32), strict=True):
            row_logits[row] = logits
    text_of = np.array([text for text, _ in rows], dtype=np.int64)
    return aggregate_rows(np.stack(row_logits), text_of, len(sequences), reading.aggregate)  # type: ignore[arg-type]


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
    overrides it): the positive class when its probability is >= the threshold. With several labels
    per text, the labels whose probabilities reach their thresholds.

    Texts are read as in training (`LongTexts`: cut to `max_length`, head and tail, or windows whose
    logits are aggregated), tokenizing only what is read; `max_length` overrides the trained length.
    They are padded as in training: to `max_length` when it was trained that way (the book),
    otherwise only to the longest sequence of each batch. `device` applies to a torch classifier.
    """
    scorer = as_scorer(classifier, device)
    tokenizer = tokenizer or get_tokenizer()
    reading = reading_for(scorer, max_length)
    sequences = [reading.encode(tokenizer, text) for text in texts]
    probs = scorer.probabilities(text_logits(sequences, scorer, reading, batch_size))
    decided = scorer.decide(probs, threshold).tolist()
    names = scorer.class_names
    windows = [len(s) if reading.mode == "windows" else None for s in sequences]
    if scorer.multi_label:
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
