"""Several labels per text, end to end: the tiny model learns a synthetic 3-label task, its thresholds
per label (chosen on validation) round-trip through the checkpoint, the Hugging Face folder and the
ONNX file, and transformers' pipeline, ONNX Runtime and our predictor give the same probabilities."""

from __future__ import annotations

import json
import random

import lightning as L
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL, adamw, quiet_trainer

from gpt_classifier.data.multilabel import MultiLabelDataModule
from gpt_classifier.deploy.hf_export import export_hf
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import load_predictor, predict_texts
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier
from gpt_classifier.training.multilabel import choose_thresholds, multilabel_report, pos_weight

CUES = {"billing": "invoice", "bug": "crash", "urgent": "asap"}
FILLER = ["the", "a", "of", "and", "to", "in", "it", "is", "my", "please"]
TOL = 1e-4


def write_tickets(path, count: int, seed: int = 0) -> None:
    """12-word tickets; each label applies with probability 0.4, shown by its cue word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = [rng.choice(FILLER) for _ in range(12)]
        labels = [name for name in CUES if rng.random() < 0.4]
        for name in labels:
            words[rng.randrange(12)] = CUES[name]
        rows.append({"text": " ".join(words), "labels": "|".join(labels)})
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multilabel")
    write_tickets(folder / "tickets.csv", 400)
    dm = MultiLabelDataModule(
        folder / "data", path=str(folder / "tickets.csv"), label_column="labels", padding="dynamic"
    )
    dm.prepare_data()
    dm.setup()
    L.seed_everything(0)
    module = GPTClassifier(
        TINY_MODEL,
        dm.class_names,
        finetune={"policy": "all"},
        classifier={"position": "flexible"},
        data=dm.data_settings(),
        optimizer=adamw(2e-3),
        loss={"class_weights": "balanced"},
        decision={"min_precision": None, "threshold": None},
    )
    trainer = quiet_trainer(max_epochs=4)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    path = folder / "tickets.ckpt"
    trainer.save_checkpoint(path)
    texts = pd.read_csv(folder / "data" / "test.csv")["Text"].tolist()
    return module, path, texts


def test_it_learns_three_labels(trained):
    module = trained[0]
    report = module.test_report
    assert report["micro_f1"] >= 0.8 and report["macro_f1"] >= 0.8
    assert module.final_metrics["test_acc"] == report["subset_accuracy"] >= 0.6
    for name in CUES:
        assert set(report[name]) == {"precision", "recall", "f1", "support", "roc_auc"}
        assert report[name]["roc_auc"] >= 0.85
    assert module.class_weights.shape == (3,)  # pos_weight per label


def test_thresholds_round_trip_through_checkpoint_hf_and_onnx(trained, tmp_path):
    module, path, texts = trained
    thresholds = module.classifier.thresholds
    assert len(thresholds) == 3 and thresholds != [0.5] * 3
    classifier = load_classifier(path)
    assert classifier.multi_label and classifier.thresholds == pytest.approx(thresholds)
    ours = predict_texts(texts, classifier)
    for prediction in ours:
        chosen = [
            n
            for n, t in zip(classifier.class_names, thresholds, strict=True)
            if prediction.probabilities[n] >= t
        ]
        assert prediction.labels == chosen and prediction.label == "|".join(chosen)
    export_onnx(classifier, tmp_path / "model.onnx")
    onnx = load_predictor(tmp_path / "model.onnx")
    assert onnx.classifier.thresholds == pytest.approx(thresholds)
    for mine, theirs in zip(ours, onnx.predict(texts), strict=True):
        assert theirs.probabilities == pytest.approx(mine.probabilities, abs=TOL)
        assert theirs.labels == mine.labels
    export_hf(classifier, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["gpt_classifier"]["thresholds"] == pytest.approx(thresholds)


def test_transformers_pipeline_equals_ours(trained, tmp_path):
    from transformers import pipeline

    _, path, texts = trained
    classifier = load_classifier(path)
    export_hf(classifier, tmp_path / "hf")
    classify = pipeline("text-classification", model=str(tmp_path / "hf"), top_k=None, device="cpu")
    for prediction, scores in zip(predict_texts(texts[:20], classifier), classify(texts[:20]), strict=True):
        assert {s["label"]: s["score"] for s in scores} == pytest.approx(prediction.probabilities, abs=TOL)


def test_thresholds_per_label_and_report():
    probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.3, 0.8], [0.1, 0.1]])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    assert choose_thresholds(probs, labels, ["a", "b"], None) == pytest.approx([0.6, 0.7])
    assert choose_thresholds(probs, labels, ["a", "b"], 1.0) == pytest.approx([0.6, 0.7])
    report = multilabel_report(probs, labels, probs >= 0.65, ["a", "b"])
    assert report["a"]["recall"] == 0.5 and report["b"]["f1"] == 1.0
    assert report["micro_f1"] == pytest.approx(2 * 3 / (3 + 4)) and report["subset_accuracy"] == 0.75


def test_balanced_pos_weight():
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert pos_weight("balanced", labels, ["a", "b"]).tolist() == [1.0, 3.0]
    with pytest.raises(GPTClassifierError, match=r"labels \['b'\] have no training example"):
        pos_weight("balanced", labels[:, :1].repeat(1, 2) * torch.tensor([1.0, 0.0]), ["a", "b"])
