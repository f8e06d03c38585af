"""Several labels per text: reading a separator column or 0/1 columns, the split, and one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import TINY_OVERRIDES, TRAIN_PY, run_cli

from gpt_classifier.data.multilabel import MultiLabelDataModule, own_data
from gpt_classifier.data.tabular import TabularDataModule
from gpt_classifier.errors import GPTClassifierError

LABELS = ["billing", "bug", "urgent"]


def tickets(count: int = 60) -> pd.DataFrame:
    """Texts with 0 to 3 labels, every combination present."""
    rows = []
    for i in range(count):
        labels = [name for bit, name in enumerate(LABELS) if (i >> bit) & 1]
        rows.append({"text": f"ticket {i} " + " ".join(labels), "labels": "|".join(labels)})
    return pd.DataFrame(rows)


def prepared(tmp_path, **options) -> MultiLabelDataModule:
    dm = own_data(tmp_path / "out", **{"label_column": "labels", "multi_label": True, **options})
    dm.prepare_data()
    dm.setup()
    return dm


def test_a_separator_column(tmp_path):
    tickets().to_csv(tmp_path / "t.csv", index=False)
    dm = prepared(tmp_path, path=str(tmp_path / "t.csv"))
    assert isinstance(dm, MultiLabelDataModule) and dm.class_names == LABELS
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == LABELS
    texts = pd.concat(pd.read_csv(tmp_path / "out" / f"{s}.csv") for s in ("train", "validation", "test"))
    assert len(texts) == 60
    for split, dataset in dm.datasets.items():
        frame = pd.read_csv(tmp_path / "out" / f"{split}.csv")
        for text, row in zip(frame["Text"], dataset.labels, strict=True):
            named = [name for name, on in zip(LABELS, row, strict=True) if on]
            assert sorted(named) == sorted(text.split()[2:])  # "ticket i <labels>"
    assert [0.0, 0.0, 0.0] in dm.datasets["train"].labels  # a text without labels: all negatives
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape == (8, 3) and batch["labels"].dtype.is_floating_point


def test_the_split_keeps_every_label_in_every_split(tmp_path):
    tickets(200).to_csv(tmp_path / "t.csv", index=False)
    dm = prepared(tmp_path, path=str(tmp_path / "t.csv"))
    for dataset in dm.datasets.values():
        positives = pd.DataFrame(dataset.labels).sum(0)
        assert (positives > 0).all()
    sizes = {split: len(d) for split, d in dm.datasets.items()}
    assert sizes["train"] == pytest.approx(140, abs=8) and sizes["test"] == pytest.approx(40, abs=8)


def test_label_columns_imply_several_labels(tmp_path):
    frame = tickets()
    for name in LABELS:
        frame[name] = frame["labels"].str.contains(name).astype(int)
    frame.drop(columns="labels").to_csv(tmp_path / "t.csv", index=False)
    dm = own_data(tmp_path / "out", path=str(tmp_path / "t.csv"), label_columns=["urgent", "billing", "bug"])
    assert isinstance(dm, MultiLabelDataModule)
    dm.prepare_data()
    dm.setup()
    assert dm.class_names == LABELS  # sorted, as with a separator
    assert isinstance(own_data(tmp_path / "out", path=str(tmp_path / "t.csv")), TabularDataModule)


@pytest.mark.parametrize(
    ("cells", "options", "message"),
    [
        (
            ["a|b", "a||b"],
            {},
            r"t.csv: a blank label \(two separators in a row, or one at an end\) in row 3, 5, 7",
        ),
        (["a|", "b"], {}, r"in row 2, 4, 6, 8, 10: remove the extra '\|'"),
        (["a", "b"], {}, r"data.label_separator='\|' never occurs in column 'labels': set the separator"),
        (
            ["a|b", "c"],
            {"class_names": ["a", "b"]},
            r"labels \['c'\] are not in data.class_names \['a', 'b'\]",
        ),
        (["", ""], {"label_separator": ";"}, r"never occurs"),
        (["a|b", "b"], {"label_column": "tags"}, r"no label column 'tags' \(columns: text, labels\)"),
    ],
)
def test_bad_label_files_are_one_line(tmp_path, cells, options, message):
    pd.DataFrame({"text": ["one", "two"] * 5, "labels": cells * 5}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(GPTClassifierError, match=message):
        prepared(tmp_path, path=str(tmp_path / "t.csv"), **options)


def test_bad_label_columns(tmp_path):
    pd.DataFrame({"text": ["one", "two"], "a": ["1", "yes"], "b": ["0", "maybe"]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    with pytest.raises(GPTClassifierError, match=r"column 'b' \(data.label_columns\) holds 'maybe' in row 3"):
        prepared(tmp_path, path=str(tmp_path / "t.csv"), label_columns=["a", "b"])


def test_a_label_only_in_validation(tmp_path):
    paths = {}
    for split, cells in {"train": ["a|b", "b"], "val": ["a|c", "b"], "test": ["a", "b|a"]}.items():
        paths[f"{split}_path"] = str(tmp_path / f"{split}.csv")
        pd.DataFrame({"text": ["x", "y"], "labels": cells}).to_csv(paths[f"{split}_path"], index=False)
    with pytest.raises(GPTClassifierError, match=r"label \['c'\] appears in validation but not in train"):
        prepared(tmp_path, **paths)


def test_the_cli_says_one_line(tmp_path):
    pd.DataFrame({"text": ["one", "two"] * 5, "labels": ["a||b", "b"] * 5}).to_csv(
        tmp_path / "t.csv", index=False
    )
    args = [
        *TINY_OVERRIDES,
        "data=csv",
        "data.path=t.csv",
        "data.label_column=labels",
        "data.multi_label=true",
    ]
    done = run_cli(TRAIN_PY, [*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, done
    assert "Traceback" not in output, done
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and errors[0].endswith("in row 2, 4, 6, 8, 10: remove the extra '|'"), done


def test_several_labels_need_your_own_file(tmp_path):
    from gpt_classifier.data.sms import SpamDataModule

    with pytest.raises(GPTClassifierError, match=r"^data.multi_label=true reads several labels"):
        SpamDataModule(data_dir=tmp_path, urls=[], multi_label=True)
    with pytest.raises(GPTClassifierError, match=r"^data.label_columns reads several labels"):
        SpamDataModule(data_dir=tmp_path, urls=[], label_columns=["a"])
