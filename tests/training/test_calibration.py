"""Calibrated probabilities: the temperature fit, and a run whose over-confident model is calibrated on
validation, reports ECE/NLL before and after, draws `reliability.png` and saves T in the checkpoint."""

import csv
import json
import random
import re

import pytest
import torch
from helpers import TINY_OVERRIDES, train_config

from gpt_classifier.deploy.predictor import predict_texts
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier, read_checkpoint
from gpt_classifier.training.calibration import (
    calibrate,
    calibration_scores,
    fit_temperature,
    reliability_bins,
)
from gpt_classifier.training.task import train

WORDS = ["see", "you", "at", "lunch", "home", "bus", "call", "later", "work", "film", "game", "coffee"]


def overconfident_logits(
    temperature: float, n: int = 4000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), logits `temperature * z`: calibrated exactly at that temperature."""
    generator = torch.Generator().manual_seed(seed)
    true_logits = 2 * torch.randn(n, 3, generator=generator)
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=generator).squeeze(1)
    return temperature * true_logits, labels


def test_fit_temperature_finds_the_overconfidence():
    logits, labels = overconfident_logits(4.0)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.1)
    before, after = calibration_scores(logits, labels), calibration_scores(logits / temperature, labels)
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"]


def test_an_underconfident_model_is_sharpened():
    logits, labels = overconfident_logits(0.25)
    assert fit_temperature(logits, labels) == pytest.approx(0.25, rel=0.1)


def test_calibrate_scales_every_split_and_keeps_argmax():
    val, test = overconfident_logits(3.0, seed=1), overconfident_logits(3.0, seed=2)
    temperature, scaled, report = calibrate({"validation": val, "test": test}, "temperature")
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert torch.equal(scaled["test"][0].argmax(-1), test[0].argmax(-1))
    assert report["ece_after"] < report["ece_before"] and report["nll_after"] < report["nll_before"]
    assert calibrate({"validation": val}, "none") == (1.0, {"validation": val}, {})
    given, scaled, report = calibrate({"validation": val, "test": test}, "none", temperature=3.0)
    assert given == 3.0 and torch.equal(scaled["test"][0], test[0] / 3.0)  # a checkpoint's own T
    assert report["ece_after"] < report["ece_before"]
    with pytest.raises(GPTClassifierError, match=re.escape("calibration.method='platt' is unknown")):
        calibrate({"validation": val}, "platt")


# ---- end to end: a model trained too hard on noisy labels


@pytest.fixture(scope="module")
def noisy_csv(tmp_path_factory):
    """One keyword decides the label, but a fifth of the labels are flipped: memorising the training
    split makes the model over-confident on the others."""
    rng = random.Random(0)
    rows = []
    for _ in range(600):
        spam = rng.random() < 0.5
        words = rng.choices(WORDS, k=rng.randint(3, 8)) + (["prize"] if spam else [])
        rng.shuffle(words)
        flipped = rng.random() < 0.2
        rows.append((" ".join(words), "spam" if spam != flipped else "ham"))
    path = tmp_path_factory.mktemp("noisy") / "messages.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


@pytest.fixture(scope="module")
def calibrated_run(noisy_csv, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("calibrated")
    with train_config(run_settings(noisy_csv), run_dir) as cfg:
        metrics = train(cfg)
    return run_dir, metrics


def run_settings(csv_path) -> list[str]:
    return [
        *TINY_OVERRIDES,
        "trainer=cpu",
        "trainer.max_epochs=16",  # long enough to memorise the flipped labels on every CPU tried
        "threads=1",  # the thread count changes the rounding, and 8 epochs sat at the edge
        "data=csv",
        f"data.path={csv_path}",
        "data.batch_size=16",
        "data.padding=dynamic",
        "classifier.position=flexible",
        "finetune=all",
        "optimizer.lr=1e-2",
        "logger=csv",
        "calibration=temperature",
        "callbacks.model_checkpoint.monitor=null",  # the last epoch: the most over-confident
    ]


def test_the_test_ece_drops(calibrated_run):
    run_dir, metrics = calibrated_run
    report = json.loads((run_dir / "classification_report.json").read_text())
    assert report["temperature"] == metrics["temperature"] > 1  # over-confident: softened
    assert report["ece_after"] < report["ece_before"]
    assert report["nll_after"] < report["nll_before"]
    assert (run_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checkpoint_carries_the_temperature_and_the_labels_stay(calibrated_run, noisy_csv):
    run_dir, metrics = calibrated_run
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    assert read_checkpoint(best)["decision"]["temperature"] == metrics["temperature"]
    classifier = load_classifier(best)
    assert classifier.temperature == metrics["temperature"]
    with open(noisy_csv) as f:
        texts = [row["text"] for row in csv.DictReader(f)][:120]
    calibrated = predict_texts(texts, classifier)
    classifier.temperature = 1.0
    raw = predict_texts(texts, classifier)
    assert [p.label for p in calibrated] == [p.label for p in raw]
    assert all(c.probability <= r.probability + 1e-6 for c, r in zip(calibrated, raw, strict=True))
    assert max(r.probability - c.probability for c, r in zip(calibrated, raw, strict=True)) > 0.01


def test_evaluating_the_checkpoint_gives_the_same_numbers(calibrated_run, noisy_csv, tmp_path):
    """`train=false` on the calibrated checkpoint: its own T, the same losses and calibrated scores."""
    run_dir, metrics = calibrated_run
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    config = json.loads((run_dir / "classification_report.json").read_text())
    overrides = [o for o in run_settings(noisy_csv) if not o.startswith("trainer.max")]
    with train_config([*overrides, "train=false", f"ckpt_path={best}"], tmp_path) as cfg:
        evaluated = train(cfg)
    assert evaluated["temperature"] == metrics["temperature"]
    for key in ("train_loss", "val_loss", "test_loss", "test_acc"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6), key
    report = json.loads((tmp_path / "classification_report.json").read_text())
    assert report["ece_after"] == pytest.approx(config["ece_after"], abs=1e-6)
    assert report["nll_before"] == pytest.approx(config["nll_before"], abs=1e-6)


def test_reliability_bins_on_hand_made_probabilities():
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.45, 0.55]])
    labels = torch.tensor([0, 0, 0, 0])  # right, wrong, right, wrong
    confidence, accuracy, counts = reliability_bins(probs, labels, bins=10)
    assert confidence == pytest.approx([0.55, 0.6, 0.95])  # the bins [0.5, 0.6), [0.6, 0.7), [0.9, 1]
    assert accuracy == [0.0, 1.0, 0.5] and counts == [1, 1, 2]
