"""Classify new texts: `classify_review` as in the chapter, batched `predict_texts`, `load_predictor`
(a `.ckpt` in torch or an exported `.onnx` in ONNX Runtime, the same output) and `predict.py`'s CLI.

Nothing here imports Lightning, Hydra or matplotlib: `python predict.py CKPT "text"` starts in about
a second, most of it importing torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import tiktoken
import torch
from torch import Tensor, nn

from gpt_classifier.checkpoints import load_classifier
from gpt_classifier.cli import OneLineParser, run_main
from gpt_classifier.encoding import encode_texts, pad_batch
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.tokenizer import get_tokenizer


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
            from gpt_classifier.onnx_classifier import OnnxClassifier
        except ImportError as err:
            raise GPTClassifierError(
                f"{path} is an ONNX model and {err.name} is not installed: pip install -e '.[export]'"
            ) from None
        return Predictor(OnnxClassifier.load(path, device))
    device = pick_device(device)
    return Predictor(load_classifier(path, map_location=device), device)


def read_texts(texts: Sequence[str], file: str | None) -> tuple[list[str], int]:
    """The texts to classify (arguments, or a file's lines; `-` is stdin) and how many blank ones were
    skipped. Lines end at `\\n` only, so other Unicode line breaks stay inside a text."""
    if file is not None and texts:
        raise GPTClassifierError("pass texts as arguments or --file, not both")
    if file is None:
        lines = list(texts)
    else:
        name = "stdin" if file == "-" else file
        try:
            data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        except FileNotFoundError:
            raise GPTClassifierError(f"--file {file} not found") from None
        except OSError as err:
            raise GPTClassifierError(f"--file {file} is unreadable ({err.strerror})") from None
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise GPTClassifierError(
                f"{name} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): "
                "save it as UTF-8, one text per line"
            ) from None
        lines = [line.removesuffix("\r") for line in content.split("\n")]
    kept = [line for line in lines if line.strip()]
    skipped = len(lines) - len(kept) - (file is not None and lines[-1] == "")  # not the final newline
    if not kept:
        where = f"{name} has no text" if file is not None else "no texts given"
        raise GPTClassifierError(f'{where}: pass texts as arguments, e.g. "Free entry!", or --file F')
    return kept, skipped


def tsv_line(p: Prediction) -> str:
    """`label<TAB>probability<TAB>text`; tabs and line breaks inside the text are shown as spaces."""
    text = p.text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return f"{p.label}\t{p.probability:.4f}\t{text}"


def json_line(p: Prediction) -> str:
    return json.dumps(asdict(p), ensure_ascii=False)


def positive(kind: type, name: str):
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or number <= 0:
            raise ValueError
        return number

    parse.__name__ = name  # what argparse names in "invalid ... value"
    return parse


def probability(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise ValueError
    return number


def parse_args(argv: Sequence[str] | None) -> object:
    parser = OneLineParser(
        prog="predict.py",
        description="Classify texts with a trained checkpoint (.ckpt) or an exported ONNX model (.onnx).",
        epilog='Example: python predict.py outputs/runs/<run>/checkpoints/last.ckpt "Hey, dinner tonight?" '
        '"You won a prize!". Output: label<TAB>probability<TAB>text per text, in input order.',
    )
    parser.add_argument(
        "model", metavar="MODEL", help="a .ckpt written by train.py, or an .onnx from export.py"
    )
    parser.add_argument("texts", metavar="TEXT", nargs="*", help="texts to classify (quote each one)")
    parser.add_argument(
        "--file", metavar="F", help="read one text per line from F (`-`: stdin); blank lines skipped"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per line, with every class's probability"
    )
    parser.add_argument(
        "--batch-size", type=positive(int, "positive integer"), default=64, help="texts per batch (64)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (auto)")
    parser.add_argument(
        "--threshold",
        type=probability,
        help="two classes: the positive class's probability from which it is predicted "
        "(default: the model's own, else the most probable class)",
    )
    parser.add_argument(
        "--max-length",
        type=positive(int, "positive integer"),
        help="truncate texts to this many tokens (default: the length the model was trained with)",
    )
    return parser.parse_intermixed_args(argv)


def cli(argv: Sequence[str] | None = None) -> None:
    """`predict.py`: print one line per text (TSV or JSON), in input order."""
    args = parse_args(argv)
    texts, skipped = read_texts(args.texts, args.file)
    if skipped:
        print(f"skipped {skipped} empty line{'s' * (skipped != 1)}", file=sys.stderr)
    predictor = load_predictor(args.model, args.device)
    predictions = predictor.predict(texts, args.batch_size, args.threshold, args.max_length)
    print("\n".join(map(json_line if args.json else tsv_line, predictions)), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(cli, argv)
