"""`predict.py` / `gpt-classifier predict`: classify texts given as arguments, a file or stdin, or score
a table (CSV, TSV, JSONL, Parquet) into a file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from gpt_classifier.cli.one_line_errors import OneLineParser, run_main
from gpt_classifier.deploy.predictor import Prediction, Predictor, load_predictor
from gpt_classifier.errors import GPTClassifierError


def decode_utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise GPTClassifierError(
            f"{name} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): "
            "save it as UTF-8, one text per line"
        ) from None


def read_arguments(texts: Sequence[str]) -> list[str]:
    """The TEXT arguments; a bare `-` is the whole of standard input, as one text (an e-mail, say)."""
    if list(texts).count("-") > 1:
        raise GPTClassifierError("`-` (standard input) can be given once: it is read as one text")
    read: list[str] = []
    for number, text in enumerate(texts, start=1):
        where = f"text {number} of {len(texts)}"
        if text == "-":
            text = decode_utf8(sys.stdin.buffer.read(), "standard input").removesuffix("\n")
            text, where = text.removesuffix("\r"), f"{where} (`-`: standard input)"
        if not text.strip():
            raise GPTClassifierError(f"{where} is empty: give it some words, or leave it out")
        read.append(text)
    return read


def read_texts(texts: Sequence[str], file: str | None) -> tuple[list[str], int]:
    """The texts to classify (arguments, or a file's lines; `-` is stdin) and how many blank lines were
    skipped. Lines end at `\\n` only, so other Unicode line breaks stay inside a text."""
    if file is not None and texts:
        raise GPTClassifierError("pass texts as arguments or --file, not both")
    if file is None:
        if not texts:
            raise GPTClassifierError(
                'no texts given: pass texts as arguments, e.g. "Free entry!", `-` for standard input, '
                "--file F (one text per line) or --input TABLE --output FILE"
            )
        return read_arguments(texts), 0
    name = "stdin" if file == "-" else file
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except FileNotFoundError:
        raise GPTClassifierError(f"--file {file} not found") from None
    except OSError as err:
        raise GPTClassifierError(f"--file {file} is unreadable ({err.strerror})") from None
    lines = [line.removesuffix("\r") for line in decode_utf8(data, name).split("\n")]
    kept = [line for line in lines if line.strip()]
    skipped = len(lines) - len(kept) - (lines[-1] == "")  # not the final newline
    if not kept:
        raise GPTClassifierError(f"{name} has no text: put one text per line")
    return kept, skipped


def tsv_line(p: Prediction) -> str:
    """`label<TAB>probability<TAB>text`; tabs and line breaks inside the text are shown as spaces."""
    text = p.text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return f"{p.label}\t{p.probability:.4f}\t{text}"


def json_line(p: Prediction) -> str:
    fields = {key: value for key, value in asdict(p).items() if value is not None}  # windows: only if read
    return json.dumps(fields, ensure_ascii=False)


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
    parser.add_argument(
        "texts",
        metavar="TEXT",
        nargs="*",
        help="texts to classify (quote each one); `-` reads stdin as one text",
    )
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
        help="tokens per sequence read: the cut text, or each window with data.long_texts=windows "
        "(default: the length the model was trained with)",
    )
    add_table_arguments(parser)
    return parser.parse_intermixed_args(argv)


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """`--input TABLE --output FILE` and how the table is read (as training reads its own data)."""
    table = parser.add_argument_group(
        "score a table (--input TABLE --output FILE)",
        "Every input column is kept; label, probability and probability_<class> are added. Streamed in "
        "chunks; a rerun after a kill resumes from <output>.parts/. --file is for one text per line.",
    )
    table.add_argument("--input", metavar="TABLE", help="a .csv, .tsv, .jsonl or .parquet file to score")
    table.add_argument("--output", metavar="FILE", help="where to write: .csv, .tsv, .jsonl or .parquet")
    table.add_argument(
        "--text-column", default="text", help="the column with the texts (text); a number with --no-header"
    )
    table.add_argument("--no-header", action="store_true", help="CSV/TSV: the first row is data")
    table.add_argument("--encoding", default="utf-8", help="CSV/TSV/JSONL text encoding (utf-8)")
    table.add_argument(
        "--chunk-rows",
        type=positive(int, "positive integer"),
        default=1000,
        help="rows per chunk: memory holds one; a kill loses at most one (1000)",
    )
    table.add_argument(
        "--on-bad-row",
        choices=("skip", "keep", "fail"),
        default="skip",
        help="a row without text or unparseable: report and skip it, keep it with an error column, "
        "or stop (skip)",
    )
    table.add_argument("--column-prefix", default="", help="before each added column's name, e.g. predicted_")


def cli(argv: Sequence[str] | None = None) -> None:
    """`predict.py`: print one line per text (TSV or JSON) in input order, or score a table into a file."""
    args = parse_args(argv)
    if args.input is not None or args.output is not None:
        score_table(args)
        return
    texts, skipped = read_texts(args.texts, args.file)
    if skipped:
        print(f"skipped {skipped} empty line{'s' * (skipped != 1)}", file=sys.stderr)
    predictor = load_predictor(args.model, args.device)
    if args.threshold is not None:  # imported only then: scoring tables needs pandas, texts do not
        from gpt_classifier.deploy.scoring import check_threshold

        check_threshold(predictor.class_names, args.threshold)
    if args.explain:
        print_explanations(predictor, texts, args)
        return
    predictions = predictor.predict(texts, args.batch_size, args.threshold, args.max_length)
    print("\n".join(map(json_line if args.json else tsv_line, predictions)), flush=True)


def score_table(args: argparse.Namespace) -> None:
    """`--input TABLE --output FILE`: the table with predictions, and a summary line on stderr."""
    from gpt_classifier.deploy.scoring import FileOptions, ScoringOptions, score_file

    if args.input is None or args.output is None:
        raise GPTClassifierError("--input TABLE and --output FILE go together: pass both")
    if args.texts or args.file is not None or args.json:
        raise GPTClassifierError(
            "--input scores a table into --output: leave out TEXT, --file and --json (its extension "
            "chooses the output format)"
        )
    text_column: str | int = args.text_column
    if args.no_header:
        if not args.text_column.isdigit():
            raise GPTClassifierError("--no-header: pass --text-column as a column number (0 is the first)")
        text_column = int(args.text_column)
    options = ScoringOptions(
        text_column, args.batch_size, args.threshold, args.max_length, args.column_prefix
    )
    file_options = FileOptions(args.chunk_rows, not args.no_header, args.encoding, args.on_bad_row)
    summary = score_file(args.model, args.input, args.output, options, file_options, args.device)
    print(summary.line(Path(args.output), args.on_bad_row), file=sys.stderr)


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
