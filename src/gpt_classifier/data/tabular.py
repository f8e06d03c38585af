"""Your own data: read a CSV, TSV, JSONL or Parquet file, check it, split it, write the three splits.

Every problem a user can fix is one `GPTClassifierError` line naming the file, the rows or the
option, and the fix. Rows are counted as in a spreadsheet: the header is row 1, data starts at 2.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.data.datamodule import SPLITS, TextClassificationDataModule, write_csv_atomic
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
# How CSV and TSV cells are read, for training and for scoring: as text, only an empty cell is missing.
CSV_READ_OPTIONS = {"keep_default_na": False, "na_values": [""], "dtype": str}


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
    df = _load_frame(path, header=header)
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in df.columns:
            hint = "; if the file has no header row, set data.header=false and use column numbers"
            raise GPTClassifierError(
                f"{path}: no column {column!r} for data.{option} "
                f"(columns: {', '.join(map(str, df.columns))}){hint if header else ''}"
            )
    table = pd.DataFrame({"Text": df[text_column], "Label": df[label_column]})
    if table.empty:
        raise GPTClassifierError(
            f"{path}: {'a header row and ' if header else ''}no data rows: add labelled rows (one per line)"
        )
    return _checked_cells(table, path, (text_column, label_column), header=header)


def _load_frame(path: Path, *, header: bool) -> pd.DataFrame:
    """The whole file as read by pandas for its suffix; unreadable files become one error line."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise GPTClassifierError(
            f"{path}: unknown file type {path.suffix!r}: use .csv, .tsv, .jsonl or .parquet"
        )
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(
                path,
                sep="," if kind == "csv" else "\t",
                header=0 if header else None,
                encoding="utf-8",
                **CSV_READ_OPTIONS,
            )
        if kind == "jsonl":
            return pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        return pd.read_parquet(path)
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


def _checked_cells(
    table: pd.DataFrame, path: Path, columns: tuple[str | int, str | int], *, header: bool
) -> pd.DataFrame:
    """`table` with text as str and labels as int or str, after refusing blank texts and labels."""
    text = table["Text"].astype("string")
    blank = text.isna() | (text.str.strip() == "")
    missing = table["Label"].isna() | (table["Label"].astype("string").str.strip() == "")
    for option, column, empty in zip(("text_column", "label_column"), columns, (blank, missing), strict=True):
        if empty.all():
            raise GPTClassifierError(
                f"{path}: column {column!r} (data.{option}) is empty in every row: is it the right column?"
            )
    if blank.any():
        raise GPTClassifierError(
            f"{path}: empty text in row {_rows(blank, header)}: fill in or remove those rows"
        )
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


class TabularDataModule(TextClassificationDataModule):
    """Your own labelled texts with any number of classes.

    Either one file (`path`), split by class into train/validation/test by `fractions` with `seed`,
    or your own three files (`train_path`, `val_path`, `test_path`). CSV, TSV, JSONL or Parquet;
    labels may be strings or integers. The classes, in order, are `class_names` when given, else
    the sorted labels found; they are saved with the split and in every checkpoint.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        text_column: str | int = "text",
        label_column: str | int = "label",
        header: bool = True,
        class_names: Sequence[str | int] | None = None,
        balance: bool = False,
        fractions: Sequence[float] = (0.7, 0.1, 0.2),
        seed: int = 123,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, class_names=[], **kwargs)
        own_files = (train_path, val_path, test_path)
        if (path is None) == all(p is None for p in own_files) or (path is None and None in own_files):
            raise GPTClassifierError(
                "set data.path=<file> to split one file, or all of data.train_path, data.val_path and "
                "data.test_path to use your own splits"
            )
        self.path = path
        self.split_paths = dict(zip(SPLITS, own_files, strict=True))
        self.source_columns = (text_column, label_column)
        self.header = header
        self.class_names_option = list(class_names) if class_names is not None else None
        self.balance = balance
        self.fractions = list(fractions)
        self.seed = seed
        self.prepared = False

    def prepare_data(self) -> None:
        """Read, check, split and write the files, once per data module (Lightning calls this again
        before fitting and testing)."""
        if self.prepared:
            return
        text_column, label_column = self.source_columns
        if self.path is not None:
            df = read_table(self.path, text_column, label_column, self.header)
            names = class_order(df["Label"].tolist(), self.class_names_option, str(self.path))
            if self.balance:
                df = balance_classes(df, self.seed)
            frames = dict(
                zip(SPLITS, stratified_split(df, self.fractions, self.seed, str(self.path)), strict=True)
            )
        else:
            frames = {
                s: read_table(p, text_column, label_column, self.header) for s, p in self.split_paths.items()
            }
            labels = [label for df in frames.values() for label in df["Label"]]
            names = class_order(labels, self.class_names_option, str(self.split_paths["train"]))
            check_classes_in_train(frames, str(self.split_paths["train"]))
            if self.balance:
                frames["train"] = balance_classes(frames["train"], self.seed)
        index = {name: i for i, name in enumerate(names)}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for split, df in frames.items():
            out = pd.DataFrame({"Label": df["Label"].map(index), "Text": df["Text"]})
            write_csv_atomic(out, self.data_dir / f"{split}.csv")
        classes = self.data_dir / "classes.json"
        write_json_atomic([str(name) for name in names], classes)
        counts = ", ".join(f"{split} {len(df)}" for split, df in frames.items())
        log.info(
            "%d classes (%s); rows: %s; written to %s",
            len(names),
            ", ".join(map(str, names)),
            counts,
            self.data_dir,
        )
        self.prepared = True

    def setup(self, stage: str | None = None) -> None:
        classes = self.data_dir / "classes.json"
        if not classes.is_file():
            raise GPTClassifierError(f"{classes} not found: call prepare_data() first")
        self.class_names = json.loads(classes.read_text())
        super().setup(stage)
