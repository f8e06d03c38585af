"""Classify new texts with a trained classifier: `classify_review` as in the chapter, and batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tiktoken
import torch
from omegaconf import DictConfig

from gpt_classifier.checkpoints import load_classifier
from gpt_classifier.classifier import TextClassifier
from gpt_classifier.encoding import encode_texts, pad_batch
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.tokenizer import get_tokenizer


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def predict_texts(
    texts: list[str],
    classifier: TextClassifier,
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
    model: TextClassifier,
    tokenizer: tiktoken.Encoding,
    device: str | torch.device,
    max_length: int | None = None,
) -> str:
    """The chapter's function: the class name of one text ("spam" / "not spam" for SMS)."""
    return predict_texts([text], model, tokenizer, device, max_length)[0].label


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def predict(cfg: DictConfig) -> list[Prediction]:
    """The task behind `predict.py`: texts from `text=` or `texts_file=` (one per line)."""
    if cfg.ckpt_path is None:
        raise GPTClassifierError("pass ckpt_path=<run>/checkpoints/<file>.ckpt")
    if (cfg.text is None) == (cfg.texts_file is None):
        raise GPTClassifierError('pass exactly one of text="..." or texts_file=<file with one text per line>')
    if cfg.texts_file is not None:
        path = Path(cfg.texts_file)
        if not path.is_file():
            raise GPTClassifierError(f"texts_file={path} not found")
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        texts = [str(cfg.text)]
    device = pick_device(cfg.device)
    classifier = load_classifier(cfg.ckpt_path, map_location=device)
    predictions = predict_texts(texts, classifier, get_tokenizer(), device, cfg.max_length, cfg.batch_size)
    for p in predictions:
        print(f"{p.label}\t{p.probability:.4f}\t{p.text}", flush=True)
    return predictions
