"""Your own data end to end: the shipped 3-class example trains, reports per class, and predicts names."""

import json
import shutil

import pytest
from helpers import PREDICT_PY, ROOT, TINY_OVERRIDES, TRAIN_PY, run_cli

EXAMPLE = ROOT / "examples" / "topics.csv"


def test_example_dataset_is_what_its_generator_makes(tmp_path):
    script = tmp_path / "make_topics.py"
    shutil.copy(ROOT / "examples" / "make_topics.py", script)
    result = run_cli(script, [], tmp_path)
    assert result.returncode == 0, result
    assert (tmp_path / "topics.csv").read_bytes() == EXAMPLE.read_bytes()


def test_three_class_csv_trains_and_predicts_class_names(tmp_path):
    run_dir = tmp_path / "run"
    train = run_cli(
        TRAIN_PY,
        [
            *TINY_OVERRIDES,
            "data=csv",
            f"data.path={EXAMPLE}",
            "data.text_column=text",
            "data.label_column=label",
            "finetune=all",
            "optimizer.lr=2e-3",
            "trainer.max_epochs=2",
            "trainer=cpu",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert train.returncode == 0, train
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.9
    report = json.loads((run_dir / "classification_report.json").read_text())
    rows = {name: row for name, row in report.items() if isinstance(row, dict)}
    assert list(rows) == ["cooking", "sports", "weather"]
    assert sum(row["support"] for row in rows.values()) == 120
    for row in rows.values():  # F1: the harmonic mean of precision and recall
        precision, recall = row["precision"], row["recall"]
        assert row["f1"] == pytest.approx(2 * precision * recall / (precision + recall)), row
    correct = sum(row["recall"] * row["support"] for row in rows.values())
    assert metrics["test_acc"] == pytest.approx(correct / 120)  # the report counts the same test split
    calibration = {"temperature", "ece_before", "ece_after", "nll_before", "nll_after"}  # docs/trust.md
    assert set(report) - set(rows) == {"roc_auc", "average_precision", "ece", *calibration}
    assert (run_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    texts = tmp_path / "texts.txt"
    texts.write_text("Bake the bread for 20 minutes at 180 degrees.\nThe hockey team won 3 to 1 on Sunday.\n")
    predict = run_cli(
        PREDICT_PY,
        [str(run_dir / "checkpoints" / "last.ckpt"), "--file", str(texts), "--device", "cpu"],
        tmp_path,
    )
    assert predict.returncode == 0, predict
    labels = [line.split("\t")[0] for line in predict.stdout.splitlines()]
    assert labels == ["cooking", "sports"]
