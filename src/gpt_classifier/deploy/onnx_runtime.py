"""`OnnxClassifier`: an exported `.onnx` classifier in ONNX Runtime, with the interface prediction uses.

The file (see `onnx_export.py`) maps `input_ids` and `attention_mask` (1 for real tokens, padded at
the end) to `logits`; its metadata carries the rest of `TextClassifier.settings()` (class names,
max length, padding, reading, decision), one JSON value per key. Nothing here imports torch: numpy
arrays carry the batches in and out, so `pip install gpt-classifier[onnx-serve]` predicts and serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from gpt_classifier.data.long_texts import LongTexts
from gpt_classifier.deploy.probabilities import Decision
from gpt_classifier.errors import GPTClassifierError

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


class OnnxClassifier(Decision):
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
        self.multi_label: bool = bool(settings.get("multi_label"))
        self.thresholds: list[float] | None = settings.get("thresholds")
        self.long_texts = LongTexts.from_settings(settings, self.max_length or self.context_length)
        self.settings = settings

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> OnnxClassifier:
        """The model in `path`; `threads` caps ONNX Runtime's intra-op threads (default: every core)."""
        path = Path(path)
        if not path.is_file():
            raise GPTClassifierError(f"model {path} not found")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=providers(device))
        except GPTClassifierError:
            raise
        except Exception as err:  # onnxruntime raises its own types for foreign or truncated files
            raise GPTClassifierError(
                f"model {path} is unreadable ({type(err).__name__}): it is corrupt, truncated or not an "
                "ONNX model; export it again with export.py --format onnx"
            ) from None
        return cls(session, read_metadata(session, path))

    def __call__(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Class logits `[B, classes]` for token ids padded at the end, `lengths` real tokens each."""
        mask = np.arange(input_ids.shape[1]) < lengths[:, None]
        feed = {"input_ids": np.asarray(input_ids, dtype=np.int64), "attention_mask": mask.astype(np.int64)}
        return self.session.run(["logits"], feed)[0]

    def logits(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """What `predict_texts` asks of every scorer: logits `[B, classes]` as numpy."""
        return self(input_ids, lengths)
