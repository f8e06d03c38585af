"""`predict.py` / `gpt-classifier predict`: classify texts given as arguments, a file or stdin."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from gpt_classifier.cli.one_line_errors import OneLineParser, run_main
from gpt_classifier.deploy.predictor import Prediction, Predictor, load_predictor
from gpt_classifier.errors import GPTClassifierError


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
        "--explain",
        action="store_true",
        help="mark each text's strongest tokens toward its label (colour on a terminal, [[...]] otherwise); "
        "with --json: every token with its character offsets and score",
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
    if args.explain:
        print_explanations(predictor, texts, args)
        return
    predictions = predictor.predict(texts, args.batch_size, args.threshold, args.max_length)
    print("\n".join(map(json_line if args.json else tsv_line, predictions)), flush=True)


def print_explanations(predictor: Predictor, texts: list[str], args) -> None:
    """`--explain`: per text, its label and probability and the text with the strongest tokens marked
    (or, with --json, the prediction and every token's offsets and score)."""
    try:
        from gpt_classifier.deploy.explain import explain_texts, marked_text
    except ImportError as err:
        raise GPTClassifierError(
            f"--explain needs {err.name}, which is not installed: pip install -e '.[explain]'"
        ) from None
    explanations = explain_texts(
        texts, predictor.classifier, max_length=args.max_length, threshold=args.threshold
    )
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    for explanation in explanations:
        p = explanation.prediction
        if args.json:
            print(
                json.dumps(
                    {**asdict(p), "tokens": [asdict(t) for t in explanation.tokens]}, ensure_ascii=False
                )
            )
        else:
            print(tsv_line(Prediction(marked_text(explanation, color=color), p.label, p.probability)))
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(cli, argv)
