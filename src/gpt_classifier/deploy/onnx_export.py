"""A trained classifier to one ONNX file (`torch.onnx.export`), optionally int8 (dynamic quantization).

The graph takes `input_ids` and `attention_mask` (`[batch, tokens]`, int64, 1 for real tokens,
padded at the end: `lengths = attention_mask.sum(-1)`) and returns `logits` `[batch, classes]`, with
dynamic batch and sequence axes. It is the classifier's own forward pass with
`read_positions_only=False`: every block at every position, then the read position (or the mean),
which gives the same numbers as the packed path (whose data-dependent shapes do not trace). The
metadata holds `TextClassifier.settings()`, so `predict.py model.onnx` tokenizes, pads and decides as
the checkpoint does. The graph's logits are already divided by the calibration temperature (traced
with the forward pass); the metadata's `temperature` says which one, not a step left to do.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from gpt_classifier.atomic_files import replace_atomically
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import TextClassifier

OPSET = 18
MAX_PROTOBUF_BYTES = 2**31 - 1  # one ONNX file without external data


class OnnxGraph(nn.Module):
    """What the ONNX file computes: the classifier on `input_ids` with `attention_mask`'s lengths."""

    def __init__(self, classifier: TextClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.classifier(input_ids, attention_mask.sum(-1))


def metadata(classifier: TextClassifier) -> dict[str, str]:
    """The classifier's settings as ONNX metadata: one JSON value per key."""
    settings = {**classifier.settings(), "producer": "gpt-classifier"}
    return {key: json.dumps(value) for key, value in settings.items()}


def to_onnx_model(classifier: TextClassifier):
    """The exported `onnx.ModelProto` (fp32) with the settings in its metadata."""
    import onnx

    read_positions_only = classifier.read_positions_only
    classifier.read_positions_only = False  # the full computation traces; the same numbers
    example = torch.full((2, 8), classifier.pad_token_id, dtype=torch.long)
    mask = torch.ones_like(example)
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=classifier.context_length)
    axes = {0: batch, 1: tokens}
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),  # the exporter reports its steps on stdout
            tempfile.TemporaryDirectory() as folder,
        ):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                OnnxGraph(classifier.eval()),
                (example, mask),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
            program.save(Path(folder) / "model.onnx", external_data=False)
            model = onnx.load(Path(folder) / "model.onnx")
    finally:
        classifier.read_positions_only = read_positions_only
    for key, value in metadata(classifier).items():
        model.metadata_props.add(key=key, value=value)
    return model


def save_model(model, path: Path) -> int:
    """Write an `onnx.ModelProto` atomically; its size in bytes."""
    data = model.SerializeToString()
    if len(data) > MAX_PROTOBUF_BYTES:
        raise GPTClassifierError(
            f"the ONNX model is {len(data) / 1e9:.1f} GB, over protobuf's 2 GB for one file: "
            "models from gpt2-large up cannot be exported to one ONNX file yet; use --format hf"
        )
    replace_atomically(path, lambda f: f.write(data))
    return len(data)


def quantize_int8(model, path: Path) -> int:
    """ONNX Runtime's dynamic quantization (int8 weights, activations quantized per batch) of `model`,
    with its metadata, written atomically to `path`; its size in bytes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        fp32, int8 = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save(model, fp32)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process (shape inference) is for static quantization
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        quantized = onnx.load(int8)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    quantized.metadata_props.add(key="quantization", value=json.dumps("int8 dynamic"))
    return save_model(quantized, path)


def export_onnx(
    classifier: TextClassifier, out: str | Path, *, quantize: str | None = None
) -> dict[str, int]:
    """Write `classifier` to `out` (fp32, or int8 with `quantize="int8"`); the sizes in bytes."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise GPTClassifierError(f"--out {out}: an ONNX model's file name must end in .onnx")
    if quantize not in (None, "int8"):
        raise GPTClassifierError(f"--quantize {quantize!r} is unknown: use int8")
    with torch.no_grad():
        model = to_onnx_model(classifier)
    if quantize is None:
        return {"fp32_bytes": save_model(model, out)}
    return {"fp32_bytes": model.ByteSize(), "int8_bytes": quantize_int8(model, out)}
