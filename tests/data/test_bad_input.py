"""The bad-input table: each case fails with one line naming the file, row or option and the fix,
and leaves what was already there untouched."""

import json
import logging

import pandas as pd
import pytest

from gpt_classifier.data.tabular import TabularDataModule
from gpt_classifier.errors import GPTClassifierError

GOOD = "text,label\n" + "".join(f"message {i} about {c},{c}\n" for i in range(10) for c in ("a", "b", "c"))


def write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# case: (file content or None for a missing file, TabularDataModule options, expected message parts)
CASES = {
    "missing file": (None, {}, ["not found", "data.path"]),
    "unknown file type": ("x", {"suffix": ".xlsx"}, ["unknown file type", ".csv"]),
    "unknown text column": (
        GOOD,
        {"text_column": "body"},
        ["no column 'body'", "data.text_column", "text, label"],
    ),
    "unknown label column": (GOOD, {"label_column": "y"}, ["no column 'y'", "data.label_column"]),
    "empty text": (GOOD + ",a\n", {}, ["empty text in row 32", "fill in or remove"]),
    "whitespace-only text": (GOOD.replace("message 3 about a", "   "), {}, ["empty text in row 11"]),
    "missing label": (GOOD + "hello,\n", {}, ["missing label in row 32"]),
    "one class only": ("text,label\n" + "hi there,a\n" * 20, {}, ["only one class ('a')", "at least two"]),
    "label outside class_names": (GOOD, {"class_names": ["a", "b"]}, ["labels ['c']", "data.class_names"]),
    "not UTF-8": (
        GOOD.encode() + "caf\xe9,a\n".encode("latin-1"),
        {},
        ["not UTF-8", "0xe9", "re-save it as UTF-8"],
    ),
    "no header row": (GOOD.split("\n", 1)[1], {}, ["no column 'text'", "data.header=false"]),
    "fractions not summing to 1": (GOOD, {"fractions": [0.5, 0.1, 0.1]}, ["data.fractions", "summing to 1"]),
    "fraction leaving a split empty": (
        GOOD,
        {"fractions": [0.85, 0.05, 0.1]},
        ["leaves the validation split empty", "raise that fraction"],
    ),
    "header and no data rows": ("text,label\n", {}, ["a header row and no data rows", "add labelled rows"]),
    "empty file": ("", {}, ["cannot be read as csv"]),
    "text column of only blanks": (
        "text,label\n ,a\n,b\n  ,a\n",
        {},
        ["column 'text' (data.text_column) is empty in every row", "right column"],
    ),
    "label column of only blanks": (
        "text,label\nhi,\nyo, \n",
        {},
        ["column 'label' (data.label_column) is empty"],
    ),
    "one row per class": ("text,label\nhi,a\nyo,b\nhey,c\n", {}, ["leaves the validation split empty"]),
    "neither path nor splits": (GOOD, {"path": None}, ["set data.path=<file>", "data.train_path"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_one_clear_line(case, tmp_path):
    content, options, expected = CASES[case]
    options = dict(options)
    source = tmp_path / f"data{options.pop('suffix', '.csv')}"
    if content is not None:
        write(source, content)
    data_dir = tmp_path / "prepared"
    data_dir.mkdir()
    (data_dir / "train.csv").write_text("Label,Text\n0,kept\n")  # an earlier split must survive
    module_options = {"path": str(source), **options}
    with pytest.raises(GPTClassifierError) as raised:
        TabularDataModule(data_dir=data_dir, **module_options).prepare_data()
    message = str(raised.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (case, message)
    assert (data_dir / "train.csv").read_text() == "Label,Text\n0,kept\n"
    assert sorted(p.name for p in data_dir.iterdir()) == ["train.csv"]


def test_class_absent_from_train_in_own_splits(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\nhello,a\nbye,b\n")
    val = write(tmp_path / "val.csv", "text,label\nhi,a\nyo,c\n")
    test = write(tmp_path / "test.csv", "text,label\nhey,b\n")
    with pytest.raises(GPTClassifierError, match=r"class \['c'\] appears in validation but not in train"):
        TabularDataModule(tmp_path / "out", train_path=train, val_path=val, test_path=test).prepare_data()


def test_long_text_is_truncated_and_counted(tmp_path, caplog):
    long_text = "word " * 400
    source = write(tmp_path / "d.csv", GOOD + f"{long_text},a\n")
    module = TabularDataModule(tmp_path / "out", path=str(source), max_length="model", context_length=64)
    module.prepare_data()
    with caplog.at_level(logging.INFO, logger="gpt_classifier.data.datamodule"):
        module.setup()
    assert max(max(ds.lengths) for ds in module.datasets.values()) == 64
    cut = [
        r.getMessage() for r in caplog.records if "(median length 401 tokens) to 64 tokens" in r.getMessage()
    ]
    assert len(cut) == 1 and cut[0].split(": cut ")[1].startswith("1 of ")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_formats_integer_labels_and_class_order(tmp_path, suffix):
    rows = pd.DataFrame({"body": [f"text number {i}" for i in range(40)], "y": [i % 4 for i in range(40)]})
    source = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        rows.to_csv(source, index=False)
    elif suffix == ".tsv":
        rows.to_csv(source, index=False, sep="\t")
    elif suffix == ".jsonl":
        rows.to_json(source, orient="records", lines=True)
    else:
        rows.to_parquet(source)
    module = TabularDataModule(tmp_path / "out", path=str(source), text_column="body", label_column="y")
    module.prepare_data()
    module.setup()
    assert module.class_names == ["0", "1", "2", "3"]
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["0", "1", "2", "3"]
    sizes = {split: len(ds) for split, ds in module.datasets.items()}
    assert sizes == {"train": 28, "validation": 4, "test": 8}  # 10 per class: 7 / 1 / 2, stratified
    for ds in module.datasets.values():
        assert sorted(set(ds.labels)) == [0, 1, 2, 3]


def test_headerless_file_by_column_number(tmp_path):
    source = write(tmp_path / "d.csv", GOOD.split("\n", 1)[1])
    module = TabularDataModule(
        tmp_path / "out", path=str(source), header=False, text_column=0, label_column=1
    )
    module.prepare_data()
    module.setup()
    assert module.class_names == ["a", "b", "c"]


def test_class_names_fix_the_order_and_balance(tmp_path):
    unbalanced = (
        "text,label\n"
        + "".join(f"x {i},big\n" for i in range(30))
        + "".join(f"y {i},small\n" for i in range(10))
    )
    source = write(tmp_path / "d.csv", unbalanced)
    module = TabularDataModule(tmp_path / "out", path=str(source), class_names=["small", "big"], balance=True)
    module.prepare_data()
    module.setup()
    assert module.class_names == ["small", "big"]
    labels = [label for ds in module.datasets.values() for label in ds.labels]
    assert labels.count(0) == labels.count(1) == 10
