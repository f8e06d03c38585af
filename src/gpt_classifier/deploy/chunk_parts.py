"""Where a scoring run keeps its finished chunks: `<output>.parts/`, then the output assembled from them.

Each chunk is written atomically as its own file, with a small stats file written after it (its
presence marks the chunk as done). A manifest says which input, model and options the chunks
belong to, so a rerun reuses them only when all of these are unchanged; the final file is then
byte-identical to that of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from gpt_classifier.atomic_files import replace_atomically, write_json_atomic
from gpt_classifier.errors import GPTClassifierError

OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
FINGERPRINT_BYTES = 1 << 20  # the input's first MiB is hashed: cheap for any size, catches a new file


def output_format(path: Path) -> str:
    kind = OUTPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise GPTClassifierError(
            f"--output {path}: unknown file type {path.suffix!r}: use .csv, .tsv, .jsonl or .parquet"
        )
    return kind


def file_fingerprint(path: Path, *, hash_head: bool) -> dict[str, Any]:
    """What identifies a file's content without reading all of it: path, size, mtime (and first MiB)."""
    stat = path.stat()
    fingerprint: dict[str, Any] = {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    if hash_head:
        with open(path, "rb") as f:
            fingerprint["head_sha256"] = hashlib.sha256(f.read(FINGERPRINT_BYTES)).hexdigest()
    return fingerprint


class ChunkParts:
    """The parts folder of one output; `resumed` says whether it held finished chunks of this same run."""

    def __init__(self, output: Path, manifest: dict[str, Any]) -> None:
        self.output = output
        self.format = output_format(output)
        self.folder = output.with_name(output.name + ".parts")
        self.resumed = self._open(json.loads(json.dumps(manifest)))

    def _open(self, manifest: dict[str, Any]) -> bool:
        """Reuse the folder if its manifest is this run's; replace it if it was another run's."""
        manifest_path = self.folder / "manifest.json"
        if manifest_path.is_file():
            try:
                if json.loads(manifest_path.read_text()) == manifest:
                    return True
            except (OSError, ValueError):
                pass
            shutil.rmtree(self.folder)
        elif self.folder.exists():
            raise GPTClassifierError(
                f"{self.folder} exists but holds no scoring manifest: move it away, or pick another --output"
            )
        self.folder.mkdir(parents=True)
        write_json_atomic(manifest, manifest_path)
        return False

    def _data_path(self, index: int) -> Path:
        return self.folder / f"{index:07d}.{self.format}"

    def done(self, index: int) -> dict[str, Any] | None:
        """The stats of chunk `index` if it was finished, else None."""
        stats_path = self.folder / f"{index:07d}.json"
        if not (stats_path.is_file() and self._data_path(index).is_file()):
            return None
        return json.loads(stats_path.read_text())

    def write(self, index: int, frame: pd.DataFrame, stats: dict[str, Any]) -> None:
        """Chunk `index`, atomically; its stats after it, so a chunk is done only when both are whole."""
        replace_atomically(self._data_path(index), lambda f: write_frame(frame, f, self.format, header=False))
        write_json_atomic(stats, self.folder / f"{index:07d}.json")

    def assemble(self, chunks: int, columns: Sequence[str]) -> None:
        """The output from chunks `0..chunks-1`, atomically; then the parts folder is removed."""
        paths = [self._data_path(index) for index in range(chunks)]
        if self.format == "parquet":
            replace_atomically(self.output, lambda f: _concatenate_parquet(paths, f))
        else:
            replace_atomically(self.output, lambda f: _concatenate_text(paths, columns, self.format, f))
        shutil.rmtree(self.folder)


def write_frame(frame: pd.DataFrame, file: BinaryIO, kind: str, *, header: bool) -> None:
    """One frame in the output's format (CSV/TSV header only when asked; never the index)."""
    if kind in ("csv", "tsv"):
        file.write(
            frame.to_csv(index=False, header=header, sep="," if kind == "csv" else "\t").encode("utf-8")
        )
    elif kind == "jsonl":
        text = frame.to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
        file.write((text if not text or text.endswith("\n") else text + "\n").encode("utf-8"))
    else:
        frame.to_parquet(file, index=False)


def _concatenate_text(paths: Sequence[Path], columns: Sequence[str], kind: str, out: BinaryIO) -> None:
    if kind != "jsonl":
        write_frame(pd.DataFrame(columns=list(columns)), out, kind, header=True)
    for path in paths:
        with open(path, "rb") as part:
            shutil.copyfileobj(part, out)


def _concatenate_parquet(paths: Sequence[Path], out: BinaryIO) -> None:
    """One Parquet file, one row group per chunk; a column all empty in some chunks gets its type
    from the others."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.unify_schemas([pq.read_schema(path) for path in paths], promote_options="permissive")
    with pq.ParquetWriter(out, schema) as writer:
        for path in paths:
            writer.write_table(pq.read_table(path).cast(schema))
