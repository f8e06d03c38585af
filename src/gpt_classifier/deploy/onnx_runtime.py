"""`OnnxClassifier`: an exported `.onnx` classifier in ONNX Runtime, with the interface prediction uses.

The file (see `onnx_export.py`) maps `input_ids` and `attention_mask` (1 for real tokens, padded at
the end) to `logits`; its metadata carries the rest of `TextClassifier.settings()` (class names,
max length, padding, reading, decision), one JSON value per key. No torch model is built: torch
tensors only carry the batches in and out, as `predict_texts` pads them for either backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import decide

# The metadata keys every export writes (`TextClassifier.settings()`); the reading keys are extra.
REQUIRED_KEYS = ("class_names", "max_length", "context_length", "padding", "pad_token_id")
# What each must hold, checked at load (a bad value would otherwise fail every prediction).
METADATA_TYPES = {
    "class_names": list,
    "max_length": (int, type(None)),
    "context_length": int,
    "padding": str,
    "pad_token_id": int,
}


def read_metadata(session: ort.InferenceSession, path: str | Path) -> dict[str, Any]:
    """The settings in the model's metadata, or one line saying the file is not ours."""
    props = session.get_modelmeta().custom_metadata_map
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise GPTClassifierError(
            f"{path} has no {', '.join(missing)} in its metadata: it was not written by "
            "`export.py --format onnx`; export the checkpoint again"
        )
    try:
        settings = {key: json.loads(value) for key, value in props.items()}
    except json.JSONDecodeError as err:
        raise GPTClassifierError(
            f"{path}: unreadable metadata ({err}); export the checkpoint again"
        ) from None
    for key, wanted in METADATA_TYPES.items():
        value = settings.get(key)
        if not isinstance(value, wanted) or isinstance(value, bool) or (key == "class_names" and not value):
            raise GPTClassifierError(
                f"{path}: metadata {key}={value!r} is not a valid {key}; export the checkpoint again"
            )
    return settings


def providers(device: str) -> list[str]:
    """ONNX Runtime's execution providers for a `--device`: CPU, or CUDA when asked and installed."""
    if device in ("auto", "cpu"):
        auto = device == "auto" and "CUDAExecutionProvider" in ort.get_available_providers()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if auto else ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise GPTClassifierError(
                f"--device {device}: this onnxruntime has no CUDA provider; install onnxruntime-gpu "
                "or use --device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise GPTClassifierError(f"--device {device!r} is not available for ONNX models: use auto, cpu or cuda")


class OnnxClassifier:
    """Token ids in, class logits out, computed by ONNX Runtime; settings from the file's metadata."""

    def __init__(self, session: ort.InferenceSession, settings: dict[str, Any]) -> None:
        self.session = session
        self.class_names: list[str] = list(settings["class_names"])
        self.max_length: int | None = settings["max_length"]
        self.context_length: int = settings["context_length"]
        self.padding: str = settings["padding"]
        self.pad_token_id: int = settings["pad_token_id"]
        self.positive_class: int = settings.get("positive_class", len(self.class_names) - 1)
        self.threshold: float | None = settings.get("threshold")
        self.settings = settings

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> OnnxClassifier:
        path = Path(path)
        if not path.is_file():
            raise GPTClassifierError(f"model {path} not found")
        try:
            session = ort.InferenceSession(str(path), providers=providers(device))
        except GPTClassifierError:
            raise
        except Exception as err:  # onnxruntime raises its own types for foreign or truncated files
            raise GPTClassifierError(
                f"model {path} is unreadable ({type(err).__name__}): it is corrupt, truncated or not an "
                "ONNX model; export it again with export.py --format onnx"
            ) from None
        return cls(session, read_metadata(session, path))

    def __call__(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """Class logits `[B, classes]` for token ids padded at the end, `lengths` real tokens each."""
        mask = torch.arange(input_ids.shape[1]) < lengths[:, None]
        feed = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy().astype(np.int64)}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])

    def decide(self, probabilities: Tensor, threshold: float | None = None) -> Tensor:
        threshold = self.threshold if threshold is None else threshold
        return decide(probabilities, positive_class=self.positive_class, threshold=threshold)
