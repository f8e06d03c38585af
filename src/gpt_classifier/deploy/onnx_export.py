"""A trained classifier to an ONNX file (`torch.onnx.export`), optionally int8 (dynamic quantization,
checked against fp32 by `quantization_check`).

The graph takes `input_ids` and `attention_mask` (`[batch, tokens]`, int64, 1 for real tokens,
padded at the end: `lengths = attention_mask.sum(-1)`) and returns `logits` `[batch, classes]`, with
dynamic batch and sequence axes. It is the classifier's own forward pass with
`read_positions_only=False`: every block at every position, then the read position (or the mean),
which gives the same numbers as the packed path (whose data-dependent shapes do not trace). The
metadata holds `TextClassifier.settings()`, so `predict.py model.onnx` tokenizes, pads and decides as
the checkpoint does. The graph's logits are already divided by the calibration temperature (traced
with the forward pass); the metadata's `temperature` says which one, not a step left to do.

Models over protobuf's 2 GB (gpt2-large and gpt2-xl in fp32) are written with external data: the
graph in `model.onnx` and every weight in `model.onnx.data` beside it (ONNX Runtime finds it there).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from gpt_classifier.atomic_files import replace_atomically
from gpt_classifier.deploy.quantization_check import QuantizationGate
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import TextClassifier

OPSET = 18
MAX_PROTOBUF_BYTES = 2**31 - 1  # one ONNX file without external data
GRAPH_ROOM = 2**26  # what the graph and metadata may need beside the weights in one file


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
            program.save(Path(folder) / "model.onnx", external_data=True)  # any size
            model = onnx.load(Path(folder) / "model.onnx")  # the weights back in memory
    finally:
        classifier.read_positions_only = read_positions_only
    for key, value in metadata(classifier).items():
        model.metadata_props.add(key=key, value=value)
    return model


def weight_bytes(model) -> int:
    """The bytes of the model's weights (its initializers), without serializing it."""
    return sum(len(tensor.raw_data) for tensor in model.graph.initializer)


def needs_external_data(model, limit: int = MAX_PROTOBUF_BYTES - GRAPH_ROOM) -> bool:
    """Whether one protobuf file cannot hold `model`: its weights are over `limit` bytes."""
    return weight_bytes(model) > limit


def save_model(model, path: Path, *, external_data: bool | None = None) -> int:
    """Write an `onnx.ModelProto` atomically; its size in bytes (with the external data file).

    `external_data`: None writes it only when the model needs it (over 2 GB)."""
    if external_data is None:
        external_data = needs_external_data(model)
    if not external_data:
        data = model.SerializeToString()
        replace_atomically(path, lambda f: f.write(data))
        return len(data)
    return save_with_external_data(model, path)


def save_with_external_data(model, path: Path) -> int:
    """`path` (the graph) and `path.data` (every weight), written beside them under temporary names
    and renamed into place data first: the model file never points at a half-written data file.
    `model` is consumed: ONNX moves its weights out to the file as it writes them."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        staged = Path(folder) / path.name
        onnx.save_model(
            model, staged, save_as_external_data=True, all_tensors_to_one_file=True, location=data_path.name
        )
        size = staged.stat().st_size + (Path(folder) / data_path.name).stat().st_size
        shutil.copymode(staged, Path(folder) / data_path.name)  # ONNX writes it private (0600)
        os.replace(Path(folder) / data_path.name, data_path)
        os.replace(staged, path)
    return size


QUANTIZATIONS = {"int8 dynamic": {"per_channel": False}, "int8 dynamic per-channel": {"per_channel": True}}


def int8_candidates(fp32: Path, folder: Path) -> Iterator[tuple[str, Path]]:
    """ONNX Runtime's dynamic quantizations of the file `fp32` (int8 weights, activations quantized per
    batch; per tensor, then per output channel), each written into `folder` when asked for."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = fp32.with_name(fp32.name + ".data").is_file()
    for index, (method, options) in enumerate(QUANTIZATIONS.items()):
        int8 = folder / f"int8-{index}.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process (shape inference) is for static quantization
        try:
            quantize_dynamic(
                fp32, int8, weight_type=QuantType.QInt8, use_external_data_format=large, **options
            )
        finally:
            root.setLevel(level)
        yield method, int8


def quantize_int8(model, path: Path, gate: QuantizationGate, *, external_data: bool | None) -> dict:
    """The first int8 candidate that clears `gate` (see `quantization_check`), with `model`'s metadata,
    the method and the check's numbers, written to `path`; the sizes in bytes and the check."""
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        fp32 = Path(folder) / "fp32.onnx"
        metadata = list(model.metadata_props)
        fp32_bytes = save_model(model, fp32)
        chosen, check = gate.choose(fp32, int8_candidates(fp32, Path(folder)))
        quantized = onnx.load(chosen)
        method = check.method if check else next(iter(QUANTIZATIONS))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(metadata)
    quantized.metadata_props.add(key="quantization", value=json.dumps(method))
    if check is not None:
        quantized.metadata_props.add(key="quantization_check", value=json.dumps(check.as_metadata()))
    external = needs_external_data(quantized) if external_data is None else external_data
    int8_bytes = save_model(quantized, path, external_data=external)
    return {"fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes, "check": check, "external_data": external}


def export_onnx(
    classifier: TextClassifier,
    out: str | Path,
    *,
    quantize: str | None = None,
    gate: QuantizationGate | None = None,
    external_data: bool | None = None,
    checkpoint: str | Path | None = None,
) -> dict:
    """Write `classifier` to `out` (fp32, or int8 with `quantize="int8"`, checked by `gate`: None
    writes the first candidate unchecked); the sizes in bytes, whether the weights went to an external
    data file and, for int8, the check's numbers.
    `external_data`: None writes the weights to `out.data` only when over 2 GB. With the `checkpoint`
    it came from, its model card is written beside: `<out without .onnx>.card.md`."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise GPTClassifierError(f"--out {out}: an ONNX model's file name must end in .onnx")
    if quantize not in (None, "int8"):
        raise GPTClassifierError(f"--quantize {quantize!r} is unknown: use int8")
    with torch.no_grad():
        model = to_onnx_model(classifier)
    if quantize is None:
        external = needs_external_data(model) if external_data is None else external_data
        result = {"fp32_bytes": save_model(model, out, external_data=external), "external_data": external}
    else:
        result = quantize_int8(model, out, gate or QuantizationGate(check=None), external_data=external_data)
    if checkpoint is not None:
        from gpt_classifier.deploy.model_card import card_text, onnx_usage, write_card

        usage = onnx_usage(str(out))
        if quantize is not None:
            check = result["check"]
            usage += f"\nThe weights are int8; {check.summary() if check else 'not checked against fp32'}.\n"
        card = card_text(classifier, checkpoint, usage=usage)
        result["card"] = write_card(card, out.with_suffix(".card.md"))
    return result
