"""Several labels per text: read them from one column with a separator (`billing|urgent`) or from
several 0/1 columns, check them, and split the texts keeping every label's share.

A text may have no label (all negatives). Every problem a user can fix is one `GPTClassifierError`
line naming the file, the rows and the fix. The split is stratified by each text's rarest label (its
least frequent one in the file; texts without a label form their own group): every label is spread
over train / validation / test by the fractions as far as its count allows, rare labels first.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.data.datamodule import SPLITS, write_csv_atomic
from gpt_classifier.data.encoding import encode_labels
from gpt_classifier.data.tabular import FORMATS, TabularDataModule, _rows, read_table
from gpt_classifier.errors import GPTClassifierError

log = logging.getLogger(__name__)

TRUE_VALUES, FALSE_VALUES = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no", ""}


def read_multilabel_table(
    path: str | Path,
    text_column: str | int,
    *,
    label_column: str | int | None,
    label_columns: Sequence[str | int] | None,
    separator: str,
    header: bool = True,
) -> pd.DataFrame:
    """`Text` and `Labels` (a list of label names per text) from a file, or one clear error."""
    path = Path(path)
    columns = list(label_columns or [])
    first = columns[0] if columns else label_column
    table = read_table(path, text_column, text_column, header)  # the text column, checked
    raw = read_raw(path, header)
    for column in columns or [label_column]:
        if column not in raw.columns:
            raise GPTClassifierError(
                f"{path}: no label column {column!r} (columns: {', '.join(map(str, raw.columns))})"
            )
    if columns:
        labels = [[] for _ in range(len(raw))]
        for column in columns:
            values = raw[column].fillna("").astype(str).str.strip().str.lower()
            bad = ~values.isin(TRUE_VALUES | FALSE_VALUES)
            if bad.any():
                raise GPTClassifierError(
                    f"{path}: column {column!r} (data.label_columns) holds {values[bad].iloc[0]!r} in row "
                    f"{_rows(bad, header)}: use 1 (the label applies) or 0"
                )
            for row in values.index[values.isin(TRUE_VALUES)]:
                labels[row].append(str(column))
        return pd.DataFrame({"Text": table["Text"], "Labels": labels})
    cells = raw[first].fillna("").astype(str)
    if not cells.str.contains(separator, regex=False).any():
        raise GPTClassifierError(
            f"{path}: data.label_separator={separator!r} never occurs in column {first!r}: set the "
            "separator the file uses, or data.multi_label=false for one label per text"
        )
    pieces = cells.map(lambda cell: [p.strip() for p in cell.split(separator)] if cell.strip() else [])
    blank = pieces.map(lambda labels: "" in labels)
    if blank.any():
        raise GPTClassifierError(
            f"{path}: a blank label (two separators in a row, or one at an end) in row "
            f"{_rows(blank, header)}: remove the extra {separator!r}"
        )
    return pd.DataFrame({"Text": table["Text"], "Labels": pieces.map(lambda p: sorted(set(p)))})


def read_raw(path: Path, header: bool) -> pd.DataFrame:
    """Every column of a file `read_table` already read without error, as text."""
    kind = FORMATS[path.suffix.lower()]
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        return pd.read_csv(path, sep=sep, header=0 if header else None, dtype=str, keep_default_na=False)
    frame = pd.read_json(path, lines=True, dtype=False) if kind == "jsonl" else pd.read_parquet(path)
    return frame.astype(object).where(frame.notna(), "").astype(str)


def label_order(label_lists: Sequence[Sequence[str]], class_names: Sequence[str] | None, source: str) -> list:
    """The labels: as given in `data.class_names`, or sorted; unknown ones are one error."""
    found = {label for labels in label_lists for label in labels}
    if class_names is None:
        names = sorted(found)
    else:
        names = [str(name) for name in class_names]
        unknown = found - set(names)
        if unknown:
            raise GPTClassifierError(
                f"{source}: labels {sorted(unknown)} are not in data.class_names {names}: add them there"
            )
    if len(found) < 1:
        raise GPTClassifierError(f"{source}: no text has a label: a classifier needs labelled examples")
    return names


def stratified_multilabel_split(
    df: pd.DataFrame, fractions: Sequence[float], seed: int
) -> list[pd.DataFrame]:
    """Train / validation / test, each text grouped by its rarest label (see the module docstring)."""
    counts = Counter(label for labels in df["Labels"] for label in labels)
    rarest = df["Labels"].map(lambda labels: min(labels, key=lambda x: (counts[x], x)) if labels else "")
    parts: list[list[pd.DataFrame]] = [[], [], []]
    for _, group in df.groupby(rarest, sort=True):
        group = group.sample(frac=1, random_state=seed)
        n_val, n_test = int(len(group) * fractions[1]), int(len(group) * fractions[2])
        n_train = len(group) - n_val - n_test
        parts[0].append(group[:n_train])
        parts[1].append(group[n_train : n_train + n_val])
        parts[2].append(group[n_train + n_val :])
    return [pd.concat(p).sample(frac=1, random_state=seed).reset_index(drop=True) for p in parts]


def check_labels_in_train(splits: dict[str, pd.DataFrame], source: str) -> None:
    """A label never seen in training cannot be learned: say which, and where it appears."""
    seen = {label for labels in splits["train"]["Labels"] for label in labels}
    for name in ("validation", "test"):
        absent = {label for labels in splits[name]["Labels"] for label in labels} - seen
        if absent:
            raise GPTClassifierError(
                f"{source}: label {sorted(absent)} appears in {name} but not in train: add training "
                "examples of it"
            )


def multilabel_splits(
    paths: dict[str, str | None],
    text_column: str | int,
    *,
    label_column: str | int | None,
    label_columns: Sequence[str | int] | None,
    separator: str,
    header: bool,
    class_names: Sequence[str] | None,
    fractions: Sequence[float],
    seed: int,
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The three splits (`Text`, `Labels`) and the label names, from one file (`paths["all"]`, split
    here) or three (`paths[split]`)."""
    read = {
        "text_column": text_column,
        "label_column": label_column,
        "label_columns": label_columns,
        "separator": separator,
        "header": header,
    }
    if paths.get("all") is not None:
        source = str(paths["all"])
        df = read_multilabel_table(paths["all"], **read)
        names = label_order(df["Labels"].tolist(), class_names, source)
        frames = dict(zip(SPLITS, stratified_multilabel_split(df, fractions, seed), strict=True))
    else:
        source = str(paths["train"])
        frames = {split: read_multilabel_table(paths[split], **read) for split in SPLITS}
        names = label_order([x for df in frames.values() for x in df["Labels"]], class_names, source)
    check_labels_in_train(frames, source)
    return frames, names


class MultiLabelDataModule(TabularDataModule):
    """Your own texts with several labels each (`data.multi_label=true`): as `TabularDataModule`, with
    `label_separator` (one column, e.g. `billing|urgent`) or `label_columns` (one 0/1 column per
    label). The splits' `Label` holds each text's label indices joined by `|`."""

    reads_several_labels = True

    def __init__(
        self,
        *args: Any,
        label_separator: str = "|",
        label_columns: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **{**kwargs, "multi_label": True})
        self.label_separator = label_separator
        self.label_columns = list(label_columns) if label_columns else None

    def prepare_data(self) -> None:
        text_column, label_column = self.source_columns
        frames, names = multilabel_splits(
            {"all": self.path, **self.split_paths},
            text_column,
            label_column=label_column,
            label_columns=self.label_columns,
            separator=self.label_separator,
            header=self.header,
            class_names=self.class_names_option,
            fractions=self.fractions,
            seed=self.seed,
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for split, df in frames.items():
            out = pd.DataFrame({"Label": encode_labels(df["Labels"], names), "Text": df["Text"]})
            write_csv_atomic(out, self.data_dir / f"{split}.csv")
        write_json_atomic(names, self.data_dir / "classes.json")
        counts = {name: sum(name in labels for labels in frames["train"]["Labels"]) for name in names}
        log.info(
            "%d labels, several per text (train: %s); rows: %s; written to %s",
            len(names),
            ", ".join(f"{name} {count}" for name, count in counts.items()),
            ", ".join(f"{split} {len(df)}" for split, df in frames.items()),
            self.data_dir,
        )


def own_data(
    *args: Any,
    multi_label: bool = False,
    label_separator: str = "|",
    label_columns: Sequence[str] | None = None,
    **kwargs: Any,
) -> TabularDataModule:
    """`data=csv`: one label per text (`TabularDataModule`), or several (`MultiLabelDataModule`) when
    `multi_label` is true or `label_columns` are given (logged)."""
    if label_columns and not multi_label:
        log.info("data.label_columns=%s: several labels per text (multi_label)", list(label_columns))
    if multi_label or label_columns:
        columns = {"label_separator": label_separator, "label_columns": label_columns}
        return MultiLabelDataModule(*args, **columns, **kwargs)
    return TabularDataModule(*args, **kwargs)
