"""Your own data: read a CSV, TSV, JSONL or Parquet file, check it, split it, write the three splits.

Every problem a user can fix is one `GPTClassifierError` line naming the file, the rows or the
option, and the fix. Rows are counted as in a spreadsheet: the header is row 1, data starts at 2.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gpt_classifier.errors import GPTClassifierError

log = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


def _rows(mask: pd.Series, header: bool) -> str:
    """Spreadsheet row numbers of the true entries, the first few of them."""
    rows = [int(i) + (2 if header else 1) for i in mask[mask].index[:5]]
    more = f" ({int(mask.sum())} in all)" if mask.sum() > len(rows) else ""
    return ", ".join(map(str, rows)) + more


def read_table(
    path: str | Path, text_column: str | int, label_column: str | int, header: bool = True
) -> pd.DataFrame:
    """The file's text and label columns as `Text` and `Label`, or one clear error."""
    path = Path(path)
    if not path.is_file():
        raise GPTClassifierError(
            f"{path} not found: set data.path (or data.train_path ...) to an existing file"
        )
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise GPTClassifierError(
            f"{path}: unknown file type {path.suffix!r}: use .csv, .tsv, .jsonl or .parquet"
        )
    try:
        if kind in ("csv", "tsv"):
            df = pd.read_csv(
                path,
                sep="," if kind == "csv" else "\t",
                header=0 if header else None,
                encoding="utf-8",
                keep_default_na=False,
                na_values=[""],
                dtype=str,
            )
        elif kind == "jsonl":
            df = pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        else:
            df = pd.read_parquet(path)
    except ImportError:
        raise GPTClassifierError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    except UnicodeDecodeError as err:
        raise GPTClassifierError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
            "re-save it as UTF-8"
        ) from None
    except (ValueError, OSError, pd.errors.ParserError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GPTClassifierError(f"{path} cannot be read as {kind}: {first_line}") from None
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in df.columns:
            hint = (
                ""
                if not header
                else "; if the file has no header row, set data.header=false and use column numbers"
            )
            raise GPTClassifierError(
                f"{path}: no column {column!r} for data.{option} "
                f"(columns: {', '.join(map(str, df.columns))}){hint}"
            )
    table = pd.DataFrame({"Text": df[text_column], "Label": df[label_column]})
    text = table["Text"].astype("string")
    blank = text.isna() | (text.str.strip() == "")
    if blank.any():
        raise GPTClassifierError(
            f"{path}: empty text in row {_rows(blank, header)}: fill in or remove those rows"
        )
    missing = table["Label"].isna() | (table["Label"].astype("string").str.strip() == "")
    if missing.any():
        raise GPTClassifierError(
            f"{path}: missing label in row {_rows(missing, header)}: label or remove those rows"
        )
    table["Text"] = text.astype(str)
    table["Label"] = table["Label"].map(_label_value)
    return table


def _label_value(value: object) -> object:
    """Integers stay integers (also when read as text, e.g. "2"), anything else is a string label."""
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return text


def class_order(labels: Sequence[object], class_names: Sequence[object] | None, source: str) -> list:
    """The classes in label order: as given, or sorted (numbers numerically, names alphabetically)."""
    found = set(labels)
    if class_names is None:
        names = sorted(found, key=lambda v: (isinstance(v, str), v if isinstance(v, int) else str(v)))
    else:
        names = [_label_value(name) for name in class_names]
        unknown = found - set(names)
        if unknown:
            raise GPTClassifierError(
                f"{source}: labels {sorted(map(str, unknown))} are not in "
                f"data.class_names {list(class_names)}"
            )
    if len(found) < 2:
        raise GPTClassifierError(
            f"{source}: only one class ({next(iter(found))!r}): a classifier needs examples of at least two"
        )
    return names


def balance_classes(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Undersample every class to the size of the smallest, as the book does for ham."""
    smallest = df["Label"].value_counts().min()
    parts = [group.sample(smallest, random_state=seed) for _, group in df.groupby("Label", sort=True)]
    return pd.concat(parts)


def stratified_split(
    df: pd.DataFrame, fractions: Sequence[float], seed: int, source: str
) -> list[pd.DataFrame]:
    """Train/validation/test by class, so each keeps the class mix; train gets every class."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise GPTClassifierError(
            f"data.fractions={list(fractions)} must be three non-negative numbers summing to 1 "
            "(e.g. [0.7, 0.1, 0.2])"
        )
    parts: list[list[pd.DataFrame]] = [[], [], []]
    for _, group in df.groupby("Label", sort=True):
        group = group.sample(frac=1, random_state=seed)
        n_val, n_test = int(len(group) * fractions[1]), int(len(group) * fractions[2])
        n_train = len(group) - n_val - n_test
        parts[0].append(group[:n_train])
        parts[1].append(group[n_train : n_train + n_val])
        parts[2].append(group[n_train + n_val :])
    splits = [pd.concat(p).sample(frac=1, random_state=seed).reset_index(drop=True) for p in parts]
    for name, split, fraction in zip(("train", "validation", "test"), splits, fractions, strict=True):
        if split.empty:
            raise GPTClassifierError(
                f"{source}: data.fractions={list(fractions)} leaves the {name} split empty "
                f"({fraction:g} x the rows of each class rounds down to 0): raise that fraction or add data"
            )
    return splits


def check_classes_in_train(splits: dict[str, pd.DataFrame], source: str) -> None:
    """A class never seen in training cannot be learned: say which, and where it appears."""
    seen = set(splits["train"]["Label"])
    for name in ("validation", "test"):
        absent = set(splits[name]["Label"]) - seen
        if absent:
            raise GPTClassifierError(
                f"{source}: class {sorted(map(str, absent))} appears in {name} but not in train: "
                "add training examples of it"
            )
