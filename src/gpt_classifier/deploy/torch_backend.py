"""A trained checkpoint (`.ckpt`) in torch, seen as prediction sees every classifier: numpy token ids
in, numpy probabilities and decisions out. Only `.ckpt` prediction imports this module (and torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpt_classifier.cpu_threads import apply_threads
from gpt_classifier.deploy.probabilities import Decision
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.model.classifier import TextClassifier

# What prediction reads of a `TextClassifier`: how to tokenize and pad, and how to decide.
SETTINGS = (
    "class_names",
    "max_length",
    "context_length",
    "padding",
    "pad_token_id",
    "long_texts",
    "positive_class",
    "threshold",
    "multi_label",
    "thresholds",
)


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


def load_torch_classifier(
    path: str | Path, device: torch.device, threads: int | None = None
) -> TextClassifier:
    """The checkpoint's `TextClassifier` on `device`, with torch's intra-op threads as `threads` says
    (None: the CPUs this process may use, less those busy; N: one process of several sharing them)."""
    apply_threads(threads)
    return load_classifier(path, map_location=device)


class TorchScorer(Decision):
    """A `TextClassifier` behind the numpy interface of `predict_texts` (as `OnnxClassifier` has)."""

    def __init__(self, classifier: TextClassifier, device: str | torch.device = "cpu") -> None:
        self.classifier = classifier.eval().to(device)
        self.device = device
        for name in SETTINGS:
            setattr(self, name, getattr(classifier, name))

    @torch.no_grad()
    def logits(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Class logits `[B, classes]` (float32) for token ids padded at the end."""
        ids = torch.from_numpy(input_ids).to(self.device)
        logits = self.classifier(ids, torch.from_numpy(lengths).to(self.device))
        return logits.float().cpu().numpy()
