"""Score tables: one frame, a frame per worker, or a file of any size.

`score_frame` is the unit of scoring, on one machine or many: a pandas frame in, the same frame
with the prediction columns added out. `BatchScorer` loads a model once (per process: a Ray actor,
a Spark Python worker) and maps frames with it. `score_file` streams a CSV, TSV, JSONL or Parquet
file through it in chunks, each saved as it finishes, so a rerun after a kill resumes.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from tqdm.auto import tqdm

from gpt_classifier.data.table_chunks import TableChunk, read_table_chunks
from gpt_classifier.deploy.chunk_parts import ChunkParts, file_fingerprint, output_format
from gpt_classifier.deploy.predictor import Predictor, load_predictor
from gpt_classifier.errors import GPTClassifierError

BadRowPolicy = Literal["skip", "keep", "fail"]


@dataclass(frozen=True)
class ScoringOptions:
    """How texts are read from a frame and predicted; `column_prefix` goes before every added column."""

    text_column: str | int = "text"
    batch_size: int = 64
    threshold: float | None = None
    max_length: int | None = None
    column_prefix: str = ""


def prediction_columns(class_names: list[str], column_prefix: str = "") -> list[str]:
    """`label`, `probability` (the label's), `probability_<class>` per class, `error` (None if fine)."""
    per_class = [f"{column_prefix}probability_{name}" for name in class_names]
    return [f"{column_prefix}label", f"{column_prefix}probability", *per_class, f"{column_prefix}error"]


def check_threshold(class_names: list[str], threshold: float | None) -> None:
    """A threshold picks between two classes; with more it would be silently ignored."""
    if threshold is not None and len(class_names) != 2:
        raise GPTClassifierError(
            f"--threshold is for two classes; this model has {len(class_names)} "
            f"({', '.join(class_names)}) and predicts the most probable one: drop --threshold"
        )


def text_problem(value: object) -> str | None:
    """Why `value` cannot be classified (missing or blank: empty; not a string), or None."""
    if isinstance(value, str):
        return None if value.strip() else "empty text"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "empty text"
    return f"text is a {type(value).__name__}, not a string"


def score_frame(predictor: Predictor, frame: pd.DataFrame, options: ScoringOptions) -> pd.DataFrame:
    """`frame` with the prediction columns added (see `prediction_columns`), rows and index as given.

    A row whose text is missing or empty gets no prediction and says why in the `error` column.
    """
    if options.text_column not in frame.columns:
        raise GPTClassifierError(
            f"no text column {options.text_column!r} (columns: {', '.join(map(str, frame.columns))}): "
            "pass --text-column NAME"
        )
    check_threshold(predictor.class_names, options.threshold)
    columns = prediction_columns(predictor.class_names, options.column_prefix)
    clashes = [name for name in columns if name in frame.columns]
    if clashes:
        raise GPTClassifierError(
            f"the input already has column {clashes[0]!r}: pass --column-prefix, e.g. predicted_"
        )
    errors = [text_problem(value) for value in frame[options.text_column]]
    good = [row for row, error in enumerate(errors) if error is None]
    texts = [frame[options.text_column].iat[row] for row in good]
    predictions = (
        predictor.predict(texts, options.batch_size, options.threshold, options.max_length) if texts else []
    )
    labels: list[str | None] = [None] * len(frame)
    probabilities = [[math.nan] * len(frame) for _ in range(1 + len(predictor.class_names))]
    for row, prediction in zip(good, predictions, strict=True):
        labels[row] = prediction.label
        probabilities[0][row] = prediction.probability
        for number, name in enumerate(predictor.class_names, start=1):
            probabilities[number][row] = prediction.probabilities[name]
    added = dict(zip(columns, [labels, *probabilities, errors], strict=True))
    return frame.assign(**added)


class BatchScorer:
    """`score_frame` with a model loaded once, when the scorer is built: one per worker process.

    Ray builds one per actor (`map_batches(BatchScorer, fn_constructor_kwargs=...)`); the model
    travels as a path every worker can read.
    """

    def __init__(self, model_path: str | Path, options: ScoringOptions, device: str = "cpu") -> None:
        self.predictor = load_predictor(model_path, device)
        self.options = options

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        return score_frame(self.predictor, frame, self.options)


@dataclass(frozen=True)
class FileOptions:
    """How a file is read and what happens to bad rows (`skip`: dropped, `keep`: with `error`, `fail`)."""

    chunk_rows: int = 1000
    header: bool = True
    encoding: str = "utf-8"
    on_bad_row: BadRowPolicy = "skip"


@dataclass
class ScoreSummary:
    texts: int = 0
    bad_rows: int = 0
    resumed_chunks: int = 0
    resumed_texts: int = 0  # scored by an earlier, interrupted run
    labels: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self, output: Path, on_bad_row: BadRowPolicy) -> str:
        counts = ", ".join(f"{label} {count}" for label, count in sorted(self.labels.items()))
        resumed = f", {self.resumed_chunks} chunks done before" if self.resumed_chunks else ""
        bad = f"; {self.bad_rows} bad rows {'kept' if on_bad_row == 'keep' else 'skipped'}"
        rate = (self.texts - self.resumed_texts) / max(self.seconds, 1e-9)  # this run's own work
        return (
            f"scored {self.texts} texts in {self.seconds:.1f} s ({rate:.0f} texts/s{resumed}): "
            f"{counts or 'no labels'}{bad if self.bad_rows else ''}; wrote {output}"
        )


def bad_rows(chunk: TableChunk, text_column: str | int) -> dict[int, str]:
    """Row number -> why, for the chunk's broken rows and its rows without a usable text, in order."""
    problems = dict(chunk.broken)
    if text_column in chunk.rows.columns:
        for number, value in zip(chunk.row_numbers, chunk.rows[text_column], strict=True):
            problem = text_problem(value)
            if problem is not None:
                problems[number] = problem
    return dict(sorted(problems.items()))


def chunk_frame(chunk: TableChunk, on_bad_row: BadRowPolicy) -> pd.DataFrame:
    """The chunk's rows indexed by row number; with `keep`, broken rows as empty rows in their place."""
    frame = chunk.rows.set_axis(chunk.row_numbers, axis="index")
    if on_bad_row != "keep" or not chunk.broken:
        return frame
    broken = pd.DataFrame(index=list(chunk.broken), columns=frame.columns, dtype=object)
    return pd.concat([frame, broken]).sort_index()


def write_line(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def score_file(
    model_path: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    options: ScoringOptions,
    file_options: FileOptions = FileOptions(),
    device: str = "cpu",
    report: Callable[[str], None] = write_line,
) -> ScoreSummary:
    """Score every row of `input_path` into `output_path` (format by extension), chunk by chunk.

    Memory holds one chunk. Finished chunks are kept in `<output>.parts/`; a rerun with the same
    input, model and options skips them and writes the same file. Bad rows are reported, one line
    each, with their row number.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    check_paths(input_path, output_path)
    predictor = load_predictor(model_path, device)
    manifest = {
        "input": file_fingerprint(input_path, hash_head=True),
        "model": file_fingerprint(Path(model_path), hash_head=False),
        "options": {**asdict(options), **asdict(file_options)},
    }
    summary, started = ScoreSummary(), time.perf_counter()
    read = read_table_chunks(input_path, file_options.chunk_rows, file_options.header, file_options.encoding)
    chunks = (chunk for chunk in read if len(chunk.rows) or chunk.broken)  # a header alone: no chunk
    parts: ChunkParts | None = None
    columns: list[str] = []
    with tqdm(unit=" texts", disable=None, file=sys.stderr, dynamic_ncols=True) as bar:
        for index, chunk in enumerate(chunks):
            if parts is None:  # the first chunk: check the columns before anything is written
                columns = output_columns(predictor, chunk, options, file_options.on_bad_row)
                parts = ChunkParts(output_path, manifest)
            stats = process_chunk(predictor, chunk, index, parts, columns, options, file_options, report)
            if stats.pop("resumed"):
                summary.resumed_chunks += 1
                summary.resumed_texts += stats["texts"]
            summary.texts += stats["texts"]
            summary.bad_rows += stats["bad_rows"]
            summary.labels.update(stats["labels"])
            rows_done = summary.texts + summary.bad_rows
            bar.total = max(rows_done, round(rows_done / max(chunk.fraction_read, 1e-9)))  # an estimate
            bar.update(rows_done - bar.n)
    if parts is None:
        raise GPTClassifierError(f"{input_path} has no data rows: nothing to score")
    parts.assemble(index + 1, columns)
    summary.seconds = time.perf_counter() - started
    return summary


def check_paths(input_path: Path, output_path: Path) -> None:
    """Before any work: an input that exists, an output format we write, and not the same file."""
    output_format(output_path)
    if not input_path.is_file():
        raise GPTClassifierError(
            f"--input {input_path} not found: pass an existing CSV, TSV, JSONL or Parquet file"
        )
    if output_path.resolve() == input_path.resolve():
        raise GPTClassifierError(f"--output {output_path} is the input: choose another file")


def output_columns(
    predictor: Predictor, chunk: TableChunk, options: ScoringOptions, on_bad_row: BadRowPolicy
) -> list[str]:
    """The output's columns: the input's (those of its first chunk), then the predictions."""
    added = prediction_columns(predictor.class_names, options.column_prefix)
    columns = list(score_frame(predictor, chunk.rows.head(0), options).columns)  # checks the columns
    return columns if on_bad_row == "keep" else [name for name in columns if name != added[-1]]


def process_chunk(
    predictor: Predictor,
    chunk: TableChunk,
    index: int,
    parts: ChunkParts,
    columns: list[str],
    options: ScoringOptions,
    file_options: FileOptions,
    report: Callable[[str], None],
) -> dict[str, Any]:
    """Report the chunk's bad rows, then score and save it unless it was done before; its stats."""
    problems = bad_rows(chunk, options.text_column)
    action = {"skip": "skipped", "keep": "kept", "fail": "stopping"}[file_options.on_bad_row]
    for number, problem in problems.items():
        report(f"row {number}: {problem} ({action})")
        if file_options.on_bad_row == "fail":
            raise GPTClassifierError(
                f"row {number} of the input: {problem}: fix it, or pass --on-bad-row skip (or keep)"
            )
    stats = parts.done(index)
    if stats is not None:
        return {**stats, "resumed": True}
    scored = score_frame(predictor, chunk_frame(chunk, file_options.on_bad_row), options)
    error_column = prediction_columns(predictor.class_names, options.column_prefix)[-1]
    for number, problem in chunk.broken.items():
        if number in scored.index:
            scored.loc[number, error_column] = problem
    if file_options.on_bad_row != "keep":
        scored = scored[scored[error_column].isna()]
    label_column = f"{options.column_prefix}label"
    stats = {
        "texts": int(scored[label_column].notna().sum()),
        "bad_rows": len(problems),
        "labels": {str(k): int(v) for k, v in scored[label_column].value_counts().items()},
    }
    parts.write(index, scored.reindex(columns=columns), stats)
    return {**stats, "resumed": False}
