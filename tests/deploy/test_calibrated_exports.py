"""A checkpoint's calibration temperature reaches every way of using it: prediction, the Hugging Face
folder (`pipeline()`, 1e-4) and ONNX (1e-4)."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL

from gpt_classifier.deploy.hf_export import export_hf
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import load_predictor, predict_texts
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier

CLASSES = ["ham", "spam"]
TEXTS = ["Hey, are we still on for dinner tonight?", "WINNER!! Claim your £1000 prize now", "ok"]
TEMPERATURE = 2.5


@pytest.fixture(scope="module")
def calibrated_checkpoint(tmp_path_factory):
    """A flexible-reading checkpoint (what transformers reproduces) whose decision holds a temperature."""
    torch.manual_seed(0)
    data = {"max_length": 24, "padding": "dynamic"}
    module = GPTClassifier(TINY_MODEL, CLASSES, {"policy": "all"}, {"position": "flexible"}, data)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn_like(param))
    path = tmp_path_factory.mktemp("calibrated") / "model.ckpt"
    decision = {"positive_class": 1, "threshold": None, "temperature": TEMPERATURE}
    torch.save(
        {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(), "decision": decision},
        path,
    )
    return path


def probabilities(predictions):
    return np.array([[p.probabilities[c] for c in CLASSES] for p in predictions])


def test_the_checkpoint_temperature_divides_the_logits(calibrated_checkpoint):
    classifier = load_classifier(calibrated_checkpoint)
    assert classifier.temperature == TEMPERATURE
    calibrated = probabilities(predict_texts(TEXTS, classifier))
    classifier.temperature = 1.0
    raw_logits = torch.tensor(probabilities(predict_texts(TEXTS, classifier))).log()
    expected = (raw_logits / TEMPERATURE).softmax(-1).numpy()
    np.testing.assert_allclose(calibrated, expected, atol=1e-6)
    assert np.abs(calibrated - np.exp(raw_logits.numpy())).max() > 0.01  # it changed something


def test_hf_pipeline_gives_the_calibrated_probabilities(calibrated_checkpoint, tmp_path):
    from transformers import pipeline

    classifier = load_classifier(calibrated_checkpoint)
    export_hf(classifier, tmp_path / "hf")
    expected = probabilities(predict_texts(TEXTS, classifier))
    results = pipeline("text-classification", model=str(tmp_path / "hf"))(TEXTS, top_k=None, truncation=True)
    got = np.array([[{r["label"]: r["score"] for r in result}[c] for c in CLASSES] for result in results])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    settings = json.loads((tmp_path / "hf" / "config.json").read_text())["gpt_classifier"]
    assert settings["temperature"] == TEMPERATURE


def test_onnx_gives_the_calibrated_probabilities(calibrated_checkpoint, tmp_path):
    classifier = load_classifier(calibrated_checkpoint)
    export_onnx(classifier, tmp_path / "model.onnx")
    onnx = load_predictor(tmp_path / "model.onnx")
    assert onnx.classifier.settings["temperature"] == TEMPERATURE
    expected = probabilities(predict_texts(TEXTS, classifier))
    np.testing.assert_allclose(probabilities(onnx.predict(TEXTS)), expected, atol=1e-4)
