"""Classify new texts with a trained checkpoint: `classify_review` as in the chapter, and batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch
from omegaconf import DictConfig

from gpt_classifier.data import PadCollate
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.finetune import merge_lora
from gpt_classifier.module import GPTClassifier, load_classifier
from gpt_classifier.tokenizer import PAD_TOKEN_ID, get_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    text: str
    label: str
    probability: float


@torch.no_grad()
def predict_texts(
    texts: list[str],
    model: GPTClassifier,
    tokenizer: tiktoken.Encoding,
    device: str | torch.device,
    max_length: int | None = None,
    pad_token_id: int = PAD_TOKEN_ID,
    batch_size: int = 64,
) -> list[Prediction]:
    """Label and probability per text, in order; batched by similar length.

    Texts are truncated to `max_length` (default: the length the model was trained with). They are
    padded as in training: to `max_length` when the model was trained that way (the book), otherwise
    only to the longest text of each batch.
    """
    model.eval().to(device)
    data = model.hparams["data"]
    max_length = min(
        max_length or data["max_length"] or model.model.cfg.context_length, model.model.cfg.context_length
    )
    collate = PadCollate(pad_token_id, max_length if data["padding"] == "max_length" else None)
    encoded = [ids[:max_length] for ids in tokenizer.encode_ordinary_batch(texts)]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([{"input_ids": encoded[i] or [pad_token_id], "label": 0, "index": i} for i in chunk])
        probs = model(batch["input_ids"].to(device), batch["lengths"].to(device)).softmax(-1).float().cpu()
        for row, i in enumerate(chunk):
            best = int(probs[row].argmax())
            results[i] = Prediction(texts[i], model.class_names[best], float(probs[row, best]))
    return results  # type: ignore[return-value]


def classify_review(
    text: str,
    model: GPTClassifier,
    tokenizer: tiktoken.Encoding,
    device: str | torch.device,
    max_length: int | None = None,
    pad_token_id: int = PAD_TOKEN_ID,
) -> str:
    """The chapter's function: the class name of one text ("spam" / "not spam" for SMS)."""
    return predict_texts([text], model, tokenizer, device, max_length, pad_token_id)[0].label


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
    model = load_classifier(cfg.ckpt_path, map_location=device)
    merge_lora(model.model)  # LoRA factors folded into plain weights: same outputs, less work
    predictions = predict_texts(
        texts, model, get_tokenizer(), device, cfg.max_length, batch_size=cfg.batch_size
    )
    for p in predictions:
        print(f"{p.label}\t{p.probability:.4f}\t{p.text}", flush=True)
    return predictions
