"""Any-size tables in chunks: the rows of a CSV, TSV, JSONL or Parquet file, a chunk at a time.

Scoring a corpus reads its input here: the formats and CSV options are training's (`tabular`), but
the file is streamed, and a row that cannot be parsed is reported by its row number instead of
stopping the reading.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gpt_classifier.data.tabular import CSV_READ_OPTIONS, FORMATS
from gpt_classifier.errors import GPTClassifierError


@dataclass
class TableChunk:
    """Consecutive rows of a file as read: every column, and where each row sits in the file.

    `rows` has `chunk_rows` rows but in the last chunk (a JSONL chunk counts its broken lines too).
    `row_numbers` count as in a spreadsheet (CSV/TSV with a header: the header is row 1; JSONL: the
    line; Parquet: the row); `broken` holds the rows of this stretch that could not be parsed, by
    row number, with why. `fraction_read` is how far into the file the reader is (for progress).
    """

    rows: pd.DataFrame
    row_numbers: list[int]
    broken: dict[int, str]
    fraction_read: float


def read_table_chunks(
    path: str | Path, chunk_rows: int, header: bool = True, encoding: str = "utf-8"
) -> Iterator[TableChunk]:
    """The file in chunks of `chunk_rows` rows (the last one fewer), in order, in bounded memory.

    Unlike `read_table`, a row that cannot be parsed (a CSV line with too many fields, a JSONL line
    that is not a JSON object) does not stop the reading: it is reported in `TableChunk.broken`.
    """
    path = Path(path)
    if not path.is_file():
        raise GPTClassifierError(f"{path} not found: pass an existing CSV, TSV, JSONL or Parquet file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise GPTClassifierError(
            f"{path}: unknown file type {path.suffix!r}: use .csv, .tsv, .jsonl or .parquet"
        )
    readers = {"csv": _csv_chunks, "tsv": _csv_chunks, "jsonl": _jsonl_chunks, "parquet": _parquet_chunks}
    try:
        yield from readers[kind](path, kind, chunk_rows, header, encoding)
    except ImportError:
        raise GPTClassifierError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    except UnicodeDecodeError as err:
        raise GPTClassifierError(
            f"{path} is not {encoding} text (byte {err.object[err.start]:#04x} at offset {err.start} of a "
            "block): pass its encoding, e.g. --encoding latin-1, or re-save it as UTF-8"
        ) from None
    except LookupError:
        raise GPTClassifierError(f"unknown encoding {encoding!r}: use e.g. utf-8, latin-1, cp1252") from None
    except (ValueError, OSError, pd.errors.ParserError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GPTClassifierError(f"{path} cannot be read as {kind}: {first_line}") from None


def _csv_chunks(path: Path, kind: str, chunk_rows: int, header: bool, encoding: str) -> Iterator[TableChunk]:
    """pandas' CSV reader in chunks; a line with too many fields is a `ParserWarning` naming its row."""
    size = max(path.stat().st_size, 1)
    next_row = 2 if header else 1
    with open(path, "rb") as handle:
        reader = pd.read_csv(
            handle,
            sep="," if kind == "csv" else "\t",
            header=0 if header else None,
            encoding=encoding,
            **CSV_READ_OPTIONS,
            chunksize=chunk_rows,
            on_bad_lines="warn",
        )
        with reader:
            while True:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", pd.errors.ParserWarning)
                    try:
                        rows = next(reader)
                    except StopIteration:
                        return
                broken = dict(_skipped_lines(caught))
                numbers = []
                while len(numbers) < len(rows):
                    if next_row not in broken:
                        numbers.append(next_row)
                    next_row += 1
                yield TableChunk(rows, numbers, broken, min(handle.tell() / size, 1.0))


def _skipped_lines(caught: list[warnings.WarningMessage]) -> Iterator[tuple[int, str]]:
    """(row, why) from pandas' "Skipping line 7: expected 3 fields, saw 4" warnings."""
    for warning in caught:
        for match in re.finditer(r"Skipping line (\d+): (.+)", str(warning.message)):
            yield int(match.group(1)), match.group(2).strip()


def _jsonl_chunks(
    path: Path, kind: str, chunk_rows: int, header: bool, encoding: str
) -> Iterator[TableChunk]:
    """One JSON object per line (blank lines skipped), parsed by `json`, line by line."""
    size = max(path.stat().st_size, 1)
    with open(path, "rb") as handle:
        records: list[dict] = []
        numbers: list[int] = []
        broken: dict[int, str] = {}
        for line_number, raw_line in enumerate(handle, start=1):
            line = raw_line.decode(encoding)
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    record = f"invalid JSON ({err.msg} at character {err.pos + 1})"
                if isinstance(record, dict):
                    records.append(record)
                    numbers.append(line_number)
                else:
                    broken[line_number] = record if isinstance(record, str) else "not a JSON object"
            if len(records) + len(broken) == chunk_rows:
                yield TableChunk(pd.DataFrame.from_records(records), numbers, broken, handle.tell() / size)
                records, numbers, broken = [], [], {}
        if records or broken:
            yield TableChunk(pd.DataFrame.from_records(records), numbers, broken, 1.0)


def _parquet_chunks(
    path: Path, kind: str, chunk_rows: int, header: bool, encoding: str
) -> Iterator[TableChunk]:
    """pyarrow's record batches: only one chunk's columns are in memory at a time."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    total = max(file.metadata.num_rows, 1)
    done = 0
    for batch in file.iter_batches(batch_size=chunk_rows):
        rows = batch.to_pandas()
        numbers = list(range(done + 1, done + len(rows) + 1))
        done += len(rows)
        yield TableChunk(rows, numbers, {}, done / total)
