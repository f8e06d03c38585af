"""Issue 15, a classifier for real use: class weights, the decision threshold, ranking and calibration
scores, PR/ROC curves, early stopping, MLflow tracking and LoRA scaling.

The end-to-end runs train the tiny model on a generated CSV with one positive ("spam") in eleven.
"""

import csv
import json
import random
import re

import pytest
import torch
from helpers import TINY_MODEL, TINY_OVERRIDES, train_config
from lightning.pytorch.callbacks import EarlyStopping
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt_classifier.deploy.predictor import predict_texts
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier, read_checkpoint
from gpt_classifier.model.classifier import build_classifier
from gpt_classifier.model.finetune import LoRALinear
from gpt_classifier.training.decision import class_weights, pick_threshold, precision_recall_at, scores
from gpt_classifier.training.task import make_trainer, train

HAM_WORDS = [
    "see",
    "you",
    "at",
    "lunch",
    "tomorrow",
    "meeting",
    "home",
    "dinner",
    "call",
    "me",
    "later",
    "ok",
    "thanks",
    "love",
    "mum",
    "bus",
]
HAM_WORDS += ["train", "work", "school", "book", "film", "game", "tonight", "weekend", "coffee"]
SPAM_WORDS = [
    "WIN",
    "FREE",
    "prize",
    "cash",
    "claim",
    "now",
    "urgent",
    "txt",
    "reward",
    "voucher",
    "winner",
    "guaranteed",
    "offer",
]


@pytest.fixture(scope="module")
def imbalanced_csv(tmp_path_factory):
    """300 ham and 30 spam messages from seeded word lists: one positive in eleven."""
    rng = random.Random(0)
    rows = [(" ".join(rng.choices(HAM_WORDS, k=rng.randint(4, 12))), "ham") for _ in range(300)]
    rows += [
        (" ".join(rng.choices(SPAM_WORDS + HAM_WORDS[:5], k=rng.randint(4, 12))), "spam") for _ in range(30)
    ]
    rng.shuffle(rows)
    path = tmp_path_factory.mktemp("imbalanced") / "messages.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def overrides(csv_path, *extra):
    return [
        *TINY_OVERRIDES,
        "trainer=cpu",
        "data=csv",
        f"data.path={csv_path}",
        "data.batch_size=16",
        "data.padding=dynamic",
        "classifier.position=flexible",
        "finetune=all",
        "optimizer.lr=3e-3",
        "logger=tensorboard",
        *extra,
    ]


# ---- the numbers, on hand-made inputs


def test_balanced_class_weights_are_inverse_frequencies():
    weights = class_weights("balanced", [0] * 9 + [1], num_classes=2)
    assert weights.tolist() == pytest.approx([10 / (2 * 9), 10 / (2 * 1)])
    assert class_weights(None, [0, 1], 2) is None
    assert class_weights([1, 3], [0, 1], 2).tolist() == [1.0, 3.0]


@pytest.mark.parametrize(
    ("setting", "message"),
    [("balanced", "classes [2] have no training example"), ([1.0], "must be null, balanced, or 3")],
)
def test_bad_class_weights_are_one_line_errors(setting, message):
    with pytest.raises(GPTClassifierError, match=re.escape(message)):
        class_weights(setting, [0, 1, 1], num_classes=3)


def test_pick_threshold_takes_the_lowest_that_reaches_the_precision():
    probs = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.9])
    positive = torch.tensor([0, 0, 1, 1, 1])
    assert pick_threshold(probs, positive, 0.95) == pytest.approx(0.8)  # 2 of 2 above 0.8
    assert pick_threshold(probs, positive, 0.7) == pytest.approx(0.35)  # 3 of 4 at >= 0.35
    assert precision_recall_at(probs, positive, 0.35) == pytest.approx((0.75, 1.0))
    # the most confident example is a negative: no threshold is precise enough
    assert pick_threshold(torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0, 1, 1]), 0.95) is None


def test_scores_of_a_perfect_ranking():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    result = scores(probs, labels, positive_class=1, threshold=0.75)
    assert result["roc_auc"] == pytest.approx(1.0)
    assert result["average_precision"] == pytest.approx(1.0)
    # top-label confidences 0.9, 0.8, 0.7, 0.8, all right: |mean confidence - accuracy| per bin
    assert result["ece"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.2) / 4, abs=1e-6)
    assert (result["threshold"], result["precision"], result["recall"]) == pytest.approx((0.75, 1.0, 0.5))
    three = scores(torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 2]), positive_class=2, threshold=None)
    assert three["roc_auc"] == pytest.approx(1.0) and "threshold" not in three


# ---- LoRA scaling


@pytest.mark.parametrize(("scaling", "scale"), [("alpha", 8.0), ("alpha_over_rank", 2.0)])
def test_lora_scaling(scaling, scale):
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = LoRALinear(base, rank=4, alpha=8.0, scaling=scaling)
    torch.nn.init.normal_(layer.B)
    x = torch.randn(3, 6)
    expected = base(x) + scale * (x @ layer.A @ layer.B)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.merged()(x), expected, rtol=1e-5, atol=1e-5)


def test_lora_scaling_from_the_finetune_settings():
    finetune = {"policy": "lora", "lora_rank": 2, "lora_alpha": 4, "lora_scaling": "alpha_over_rank"}
    classifier = build_classifier(TINY_MODEL, ["a", "b"], finetune=finetune)
    layers = [m for m in classifier.modules() if isinstance(m, LoRALinear)]
    assert layers and all(layer.scale == 2.0 for layer in layers)
    with pytest.raises(GPTClassifierError, match=re.escape("finetune.lora_scaling='nope' is unknown")):
        build_classifier(TINY_MODEL, ["a", "b"], finetune={**finetune, "lora_scaling": "nope"})


# ---- end to end: class weights and a threshold for 95% precision


@pytest.fixture(scope="module")
def thresholded_run(imbalanced_csv, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("thresholded")
    extra = ["trainer.max_epochs=3", "loss.class_weights=balanced", "decision.min_precision=0.95"]
    with train_config(overrides(imbalanced_csv, *extra), run_dir) as cfg:
        metrics = train(cfg)
    return run_dir, metrics


def test_min_precision_picks_a_threshold_and_reports_scores(thresholded_run):
    run_dir, metrics = thresholded_run
    written = json.loads((run_dir / "metrics.json").read_text())
    threshold = written["threshold"]
    assert threshold == metrics["threshold"] and threshold != 0.5 and 0 < threshold <= 1
    report = json.loads((run_dir / "classification_report.json").read_text())
    assert report["threshold"] == threshold
    for key in ("roc_auc", "average_precision", "ece", "precision", "recall"):
        assert 0 <= report[key] <= 1, key
    assert report["roc_auc"] > 0.8  # it learned to rank
    assert report["spam"]["support"] == 6 and report["ham"]["support"] == 60
    for name in ("pr_curve.png", "roc_curve.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "test/pr_curve/spam" in events.Tags()["tensors"]


def test_the_threshold_reaches_the_precision_on_the_validation_split(thresholded_run):
    run_dir, metrics = thresholded_run
    classifier = load_classifier(next((run_dir / "checkpoints").glob("epoch*.ckpt")))
    with open(run_dir / "data" / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    predictions = predict_texts([row["Text"] for row in rows], classifier)
    spam_probs = torch.tensor([p.probabilities["spam"] for p in predictions])
    is_spam = torch.tensor([int(row["Label"]) == classifier.class_names.index("spam") for row in rows])
    precision, _ = precision_recall_at(spam_probs, is_spam, metrics["threshold"] - 1e-6)
    assert precision >= 0.95


def test_the_checkpoint_carries_the_threshold_to_prediction(thresholded_run):
    run_dir, metrics = thresholded_run
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    decision = read_checkpoint(best)["decision"]
    assert decision == {
        "positive_class": 1,
        "threshold": metrics["threshold"],
        "temperature": metrics["temperature"],
    }
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["decision"]
    assert last["threshold"] in (metrics["threshold"], None)  # the best itself, or a later epoch (argmax)
    classifier = load_classifier(best)
    assert classifier.threshold == metrics["threshold"]
    texts = ["see you at lunch tomorrow", "WIN FREE cash prize now", "ok", "coffee at the bus"]
    for p in predict_texts(texts, classifier):  # positive exactly when its probability is >= the threshold
        assert (p.label == "spam") == (p.probabilities["spam"] >= metrics["threshold"]), p
    assert {p.label for p in predict_texts(texts, classifier, threshold=0.0)} == {"spam"}
    assert {p.label for p in predict_texts(texts, classifier, threshold=1.01)} == {"ham"}


def test_the_test_accuracy_uses_the_threshold(thresholded_run):
    run_dir, metrics = thresholded_run
    report = json.loads((run_dir / "classification_report.json").read_text())
    spam, ham = report["spam"], report["ham"]
    correct = spam["recall"] * spam["support"] + ham["recall"] * ham["support"]
    assert metrics["test_acc"] == pytest.approx(correct / (spam["support"] + ham["support"]))
    assert report["precision"] == pytest.approx(spam["precision"])


# ---- early stopping and MLflow


def test_early_stopping_is_off_unless_a_patience_is_given(imbalanced_csv, tmp_path):
    def early_stoppers(*extra):
        with train_config(overrides(imbalanced_csv, *extra), tmp_path) as cfg:
            return [c for c in make_trainer(cfg).callbacks if isinstance(c, EarlyStopping)]

    assert early_stoppers() == []
    (stopper,) = early_stoppers(
        "callbacks.early_stopping.patience=2", "callbacks.early_stopping.monitor=val/acc"
    )
    assert (stopper.patience, stopper.monitor, stopper.mode) == (2, "val/acc", "max")
    with pytest.raises(GPTClassifierError, match="patience=0 must be at least 1"):
        early_stoppers("callbacks.early_stopping.patience=0")


@pytest.fixture(scope="module")
def stopped_runs(imbalanced_csv, tmp_path_factory):
    """A run that cannot improve (learning rate 1e-9) with patience 1 and MLflow, and its resumption."""
    root = tmp_path_factory.mktemp("stopped")
    store = root / "mlruns"
    common = [
        "optimizer.lr=1e-9",
        "trainer.max_epochs=6",
        "+trainer.limit_train_batches=3",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.monitor=val/acc",
        "logger=mlflow",
        f"logger.tracking_uri=file:{store}",
    ]
    with train_config(overrides(imbalanced_csv, *common), root / "first") as cfg:
        first = train(cfg)
    resume = f"ckpt_path={root / 'first' / 'checkpoints' / 'last.ckpt'}"
    with train_config(overrides(imbalanced_csv, *common, resume), root / "resumed") as cfg:
        resumed = train(cfg)
    return root, store, first, resumed


def test_early_stopping_stops_and_says_how_many_epochs(stopped_runs):
    root, _, first, resumed = stopped_runs
    assert first["epochs_trained"] == 2  # the first epoch sets the best, the second does not beat it
    assert json.loads((root / "first" / "metrics.json").read_text())["epochs_trained"] == 2
    # Resumed: the stopper's state (its count of epochs without improvement) comes back, so the run
    # trains one more epoch and stops again unless that epoch improves.
    assert resumed["epochs_trained"] == 3


def test_mlflow_run_is_read_back(stopped_runs):
    from mlflow.tracking import MlflowClient

    root, store, first, _ = stopped_runs
    client = MlflowClient(tracking_uri=f"file:{store}")
    experiment = client.get_experiment_by_name("gpt-classifier")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # one MLflow run per training run
    (run,) = [r for r in runs if r.data.tags["output_dir"] == str(root / "first")]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final/test_acc"] == pytest.approx(first["test_acc"])
    assert "val/acc" in run.data.metrics and "train/loss_epoch" in run.data.metrics
    assert run.data.params["model/name"] == "gpt2-tiny"
    assert run.data.params["finetune/policy"] == "all"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "classification_report.json", "pr_curve.png"} <= artifacts


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["decision.threshold=2"], "decision.threshold=2 must be a probability in [0, 1]"),
        (["decision.threshold=0.5", "decision.min_precision=0.9"], "not both"),
        (["decision.min_precision=0"], "decision.min_precision=0 must be in (0, 1]"),
        (["data.positive_class=nope"], "data.positive_class='nope' is not a class: use one of ham, spam"),
        (["loss.class_weights=[1]"], "loss.class_weights=[1] must be null, balanced, or 2 non-negative"),
    ],
)
def test_bad_settings_stop_before_training(imbalanced_csv, tmp_path, extra, message):
    with (
        train_config(overrides(imbalanced_csv, *extra), tmp_path) as cfg,
        pytest.raises(GPTClassifierError, match=re.escape(message)),
    ):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()
