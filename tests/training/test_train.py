"""`train.py` end to end: the run folder, learning, evaluation and resumption, sweeps, one-line errors.

The command-line runs are mostly import time, so the module starts them all at once and the tests
read their results. The tiny model (2 blocks, 32 dimensions, random weights) keeps them short.
"""

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import TINY_OVERRIDES, TRAIN_PY, run_many, train_config
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt_classifier.deploy.predictor import predict_texts
from gpt_classifier.model.checkpoint import load_classifier, read_checkpoint
from gpt_classifier.training.task import METRIC_KEYS, train

EPOCHS = 2
TRAIN_EXAMPLES_PER_EPOCH = 1040  # 1045 training texts, batches of 8, the last partial batch dropped
METRICS_JSON_KEYS = {
    "train_acc",
    "val_acc",
    "test_acc",
    "train_loss",
    "val_loss",
    "test_loss",
    "examples_seen",
    "train_seconds",
    "threshold",  # two classes: 0.5, argmax
    "temperature",  # calibration=temperature (the default): fitted on validation
    "epochs_trained",
}

BAD_OVERRIDES = {
    # name: (overrides, what the one error line says)
    "unknown_group_option": (["finetune=nope"], "Could not find 'finetune/nope'"),
    "unknown_policy": (["finetune.policy=nope"], "finetune.policy='nope' is unknown"),
    "unknown_preset": (["experiment=nope"], "Could not find 'experiment/nope'"),
    "zero_lr": (["optimizer.lr=0"], "optimizer.lr=0 must be positive"),
    "missing_checkpoint": (["ckpt_path=/missing.ckpt"], "ckpt_path=/missing.ckpt not found"),
    "missing_weights": (["model.weights=/missing/dir"], "weights '/missing/dir' is neither a folder"),
}


# Log lines of a run's progress: Hydra's format on stdout, Lightning's own on stderr.
PROGRESS_LOG = re.compile(r"^(\[[^]]+\]\[[^]]+\]\[(INFO|WARNING)\] - |INFO: |WARNING: )")


def common(split_dir):
    return [*TINY_OVERRIDES, "trainer=cpu", f"data.data_dir={split_dir}"]


@pytest.fixture(scope="module")
def cli(sms_split_dir, tmp_path_factory):
    """Every command-line run of this module, started together; their results once all have ended."""
    root = tmp_path_factory.mktemp("train_cli")
    cwd = tmp_path_factory.mktemp("elsewhere")  # not the repository: paths must not depend on the cwd
    base = common(sms_split_dir)
    quick = [*base, "trainer.max_epochs=1", "+trainer.limit_train_batches=10"]
    jobs = {
        "run": (
            TRAIN_PY,
            [*base, f"trainer.max_epochs={EPOCHS}", "optimizer.lr=1e-3", f"hydra.run.dir={root / 'run'}"],
            cwd,
        ),
        "sweep": (
            TRAIN_PY,
            ["-m", *quick, "finetune=last_block,all", f"hydra.sweep.dir={root / 'sweep'}"],
            cwd,
        ),
        "sweep_failing": (
            TRAIN_PY,
            ["-m", *quick, "optimizer.lr=-1,1e-3", f"hydra.sweep.dir={root / 'sweep_failing'}"],
            cwd,
        ),
    }
    for name, (overrides, _) in BAD_OVERRIDES.items():
        jobs[f"bad_{name}"] = (TRAIN_PY, [*base, *overrides, f"hydra.run.dir={root / name}"], cwd)
    results = run_many(jobs, timeout=400)
    results["root"] = root
    return results


@pytest.fixture(scope="module")
def run(cli):
    result = cli["run"]
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr, result
    return cli["root"] / "run", result


def test_run_writes_metrics_json(run, sms_split_dir):
    """The numbers are the best checkpoint's: its name's validation accuracy, and the test split's
    accuracy and loss computed again from its predictions."""
    run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == METRICS_JSON_KEYS
    assert metrics["examples_seen"] == EPOCHS * TRAIN_EXAMPLES_PER_EPOCH
    assert metrics["train_seconds"] > 0
    (best,) = (run_dir / "checkpoints").glob("epoch*-val_acc*.ckpt")
    assert best.name.endswith(f"-val_acc{metrics['val_acc']:.4f}.ckpt")
    classifier = load_classifier(best)
    test = pd.read_csv(sms_split_dir / "test.csv")
    predictions = predict_texts(test["Text"].astype(str).tolist(), classifier)
    truth = [classifier.class_names[label] for label in test["Label"]]
    right = [p.label == name for p, name in zip(predictions, truth, strict=True)]
    assert metrics["test_acc"] == pytest.approx(sum(right) / len(right), abs=1e-6)
    loss = -sum(math.log(p.probabilities[name]) for p, name in zip(predictions, truth, strict=True))
    assert metrics["test_loss"] == pytest.approx(loss / len(truth), abs=1e-4)


def test_run_writes_checkpoints(run):
    run_dir, result = run
    folder = run_dir / "checkpoints"
    best = [p for p in folder.glob("epoch*-val_acc*.ckpt")]
    assert (folder / "last.ckpt").is_file()
    assert len(best) == 1
    assert re.fullmatch(r"epoch0[01]-val_acc0\.\d{4}\.ckpt", best[0].name)
    assert f"checkpoint:    {best[0]}" in result.stdout  # the report names the best checkpoint
    last = read_checkpoint(folder / "last.ckpt")
    assert last["examples_seen"] == EPOCHS * TRAIN_EXAMPLES_PER_EPOCH
    assert [row["epoch"] for row in last["history"]] == list(range(1, EPOCHS + 1))
    assert [row["examples_seen"] for row in last["history"]] == [
        TRAIN_EXAMPLES_PER_EPOCH * (e + 1) for e in range(EPOCHS)
    ]
    assert last["hyper_parameters"]["class_names"] == ["not spam", "spam"]
    assert last["hyper_parameters"]["model"]["n_layers"] == 2


def test_run_writes_tensorboard_events(run):
    run_dir, _ = run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "train/loss_step",
        "train/acc_step",
        "train/loss_epoch",
        "train/acc_epoch",
        "val/loss",
        "val/acc",
        "examples_seen",
        "by_examples_seen/train_loss",
        "by_examples_seen/train_acc",
        "by_examples_seen/val_loss",
        "by_examples_seen/val_acc",
        "final/train_acc",
        "final/val_acc",
        "final/test_acc",
        "final/test_loss",
    }
    assert expected <= tags, expected - tags
    for tag in ("by_examples_seen/val_acc", "by_examples_seen/train_acc"):
        assert [e.step for e in events.Scalars(tag)] == [
            TRAIN_EXAMPLES_PER_EPOCH * (e + 1) for e in range(EPOCHS)
        ]
    train_acc = [e.value for e in events.Scalars("train/acc_epoch")]
    assert [e.value for e in events.Scalars("by_examples_seen/train_acc")] == pytest.approx(
        train_acc, abs=1e-6
    )
    assert len(events.Scalars("by_examples_seen/train_loss")) == EPOCHS * TRAIN_EXAMPLES_PER_EPOCH // 8
    val_acc = [e.value for e in events.Scalars("val/acc")]
    assert len(val_acc) == EPOCHS
    # the best checkpoint (by val/acc) evaluated again on the validation split gives the same accuracy
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_acc"] == pytest.approx(max(val_acc), abs=1e-6)


def test_run_writes_plots(run):
    run_dir, _ = run
    for name in ("loss.png", "accuracy.png"):
        path = run_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size[0] > 200 and image.size[1] > 100
    assert not list(run_dir.glob(".*.part*"))  # no temporary files left behind


def test_run_prints_the_results_table(run):
    run_dir, result = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lines = result.stdout.splitlines()
    header = [i for i, line in enumerate(lines) if re.fullmatch(r"split\s+accuracy\s+loss", line)]
    assert len(header) == 1, result.stdout
    rows = lines[header[0] + 1 : header[0] + 4]
    splits = [("train", "train"), ("validation", "val"), ("test", "test")]
    for row, (split, name) in zip(rows, splits, strict=True):
        words = row.split()
        assert words[0] == split
        assert words[1] == f"{100 * metrics[f'{name}_acc']:.2f}%"
        assert words[2] == f"{metrics[f'{name}_loss']:.4f}"
    assert f"examples seen: {EPOCHS * TRAIN_EXAMPLES_PER_EPOCH:,}" in result.stdout
    assert f"metrics:       {run_dir / 'metrics.json'}" in result.stdout
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file()


def test_evaluate_checkpoint_reproduces_the_run(run, sms_split_dir, tiny_train_cfg):
    """`train=false ckpt_path=...` evaluates the same checkpoint to the same numbers."""
    run_dir, _ = run
    best = next((run_dir / "checkpoints").glob("epoch*-val_acc*.ckpt"))
    cfg, out = tiny_train_cfg, Path(tiny_train_cfg.paths.output_dir)
    cfg.data.data_dir, cfg.train, cfg.ckpt_path = str(sms_split_dir), False, str(best)
    metrics = train(cfg)
    written = json.loads((out / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    assert set(written) == METRICS_JSON_KEYS
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert set(METRIC_KEYS) == METRICS_JSON_KEYS - {
        "examples_seen",
        "train_seconds",
        "threshold",
        "temperature",
        "epochs_trained",
    }
    assert written["threshold"] == trained["threshold"] == 0.5  # argmax
    for key in METRIC_KEYS:
        assert written[key] == pytest.approx(trained[key], abs=1e-6), key
    assert written["train_seconds"] == 0
    assert written["examples_seen"] == read_checkpoint(best)["examples_seen"]


def test_resume_continues_from_last_checkpoint(run, sms_split_dir, tiny_train_cfg, capsys):
    run_dir, _ = run
    last = run_dir / "checkpoints" / "last.ckpt"
    cfg, out = tiny_train_cfg, Path(tiny_train_cfg.paths.output_dir)
    cfg.data.data_dir, cfg.optimizer.lr, cfg.ckpt_path = str(sms_split_dir), 1e-3, str(last)
    cfg.trainer.max_epochs = EPOCHS + 1
    metrics = train(cfg)
    assert metrics["examples_seen"] == (EPOCHS + 1) * TRAIN_EXAMPLES_PER_EPOCH
    resumed = read_checkpoint(out / "checkpoints" / "last.ckpt")
    original = read_checkpoint(last)
    assert resumed["epoch"] == EPOCHS and resumed["global_step"] == original["global_step"] * 3 // 2
    assert resumed["history"][:EPOCHS] == original["history"]
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, EPOCHS + 2))
    assert (out / "loss.png").is_file()
    # the evaluated checkpoint is one of the resumed run's own
    assert f"checkpoint:    {out / 'checkpoints'}/epoch{EPOCHS:02d}-val_acc" in capsys.readouterr().out
    # the third epoch trained from the resumed weights: the trained block moved
    name = "classifier.model.trf_blocks.1.ff.layers.0.weight"
    assert not torch.equal(resumed["state_dict"][name], original["state_dict"][name])
    frozen = "classifier.model.trf_blocks.0.ff.layers.0.weight"
    assert torch.equal(resumed["state_dict"][frozen], original["state_dict"][frozen])


def test_tiny_model_learns_to_classify_spam(sms_split_dir, tmp_path):
    """From random weights, training every layer reaches well above chance (the split is balanced).

    Dynamic padding with the last real token read keeps the batches short; bigger batches and a
    higher learning rate than the book's keep it to two quick epochs.
    """
    overrides = [
        *common(sms_split_dir),
        "finetune=all",
        "optimizer.lr=2e-3",
        "trainer.max_epochs=2",
        "data.batch_size=16",
        "data.padding=dynamic",
        "data.group_by_length=true",
        "classifier.position=flexible",
        "logger=none",
    ]
    with train_config(overrides, tmp_path) as cfg:
        metrics = train(cfg)
    assert metrics["test_acc"] > 0.75, metrics
    assert metrics["val_acc"] > 0.75, metrics
    assert metrics["train_loss"] < 0.5 < math.log(2)  # chance level is ln 2


def summary_table(sweep_dir):
    table = pd.read_csv(sweep_dir / "summary.csv")
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    return table


def test_sweep_writes_a_sorted_summary(cli):
    result, sweep_dir = cli["sweep"], cli["root"] / "sweep"
    assert result.returncode == 0, result
    table = summary_table(sweep_dir)
    assert len(table) == 2
    assert list(table["status"]) == ["ok", "ok"]
    assert sorted(table["overrides"]) == ["finetune=all", "finetune=last_block"]
    assert list(table["val_acc"]) == sorted(table["val_acc"], reverse=True)
    for _, row in table.iterrows():  # each row carries its run's metrics.json
        metrics = json.loads((sweep_dir / str(row["run"]) / "metrics.json").read_text())
        assert row["val_acc"] == pytest.approx(metrics["val_acc"])
        assert row["examples_seen"] == 80  # 10 batches of 8
    markdown = (sweep_dir / "summary.md").read_text()
    assert "finetune=all" in markdown and "finetune=last_block" in markdown
    assert "val_acc %" in markdown
    for value in table["val_acc"]:
        assert f"{100 * value:.2f}" in markdown


def test_sweep_records_a_failed_run_and_finishes_the_other(cli):
    result, sweep_dir = cli["sweep_failing"], cli["root"] / "sweep_failing"
    assert result.returncode == 0, result
    table = summary_table(sweep_dir)
    assert list(table["status"]) == ["ok", "failed"]  # finished runs first
    assert list(table["overrides"]) == ["optimizer.lr=0.001", "optimizer.lr=-1"]  # as Hydra writes them
    assert "optimizer.lr=-1 must be positive" in table.loc[1, "error"]
    assert pd.isna(table.loc[1, "val_acc"])
    failed_dir = sweep_dir / str(table.loc[1, "run"])
    assert (failed_dir / "failed.txt").is_file() and not (failed_dir / "metrics.json").exists()
    assert (sweep_dir / str(table.loc[0, "run"]) / "metrics.json").is_file()
    assert "failed" in (sweep_dir / "summary.md").read_text()


@pytest.mark.parametrize("name", list(BAD_OVERRIDES))
def test_bad_override_fails_with_one_clear_line(cli, name):
    result = cli[f"bad_{name}"]
    _, message = BAD_OVERRIDES[name]
    output = result.stdout + result.stderr
    assert result.returncode != 0, result
    assert "Traceback" not in output, result
    matching = [line for line in output.splitlines() if message in line]
    assert len(matching) == 1, result
    if name in ("unknown_group_option", "unknown_preset"):  # Hydra's own: its text, then exit 1
        lines = result.stderr.splitlines()
        assert result.stdout == "" and lines[0] == f"In 'train': {message}", result
        group = message.split("'")[1].split("/")[0]  # Could not find 'finetune/nope' -> finetune
        assert lines[1:3] == ["", f"Available options in '{group}':"], result
        assert lines[-1] == "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."
        return
    # ours: exit 2, and besides the progress log (INFO, WARNING) nothing but the error, once
    assert result.returncode == 2
    others = [line for line in output.splitlines() if line.strip() and not PROGRESS_LOG.match(line)]
    assert others == matching and "][ERROR] - " in matching[0], result
