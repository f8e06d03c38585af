"""ONNX with external data (what models over 2 GB need): the graph in `model.onnx`, the weights in
`model.onnx.data` beside it, written whole, and read back by prediction with the checkpoint's numbers.
The >2 GB export itself is measured by `bench/onnx_external_data.py` (docs/trust.md)."""

import numpy as np
import onnx
import pytest
import torch
from helpers import TINY_MODEL

from gpt_classifier.deploy.onnx_export import needs_external_data, save_model, to_onnx_model
from gpt_classifier.deploy.predictor import load_predictor, predict_texts
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier

CLASSES = ["ham", "spam"]
TEXTS = ["Hey, are we still on for dinner tonight?", "WINNER!! Claim your £1000 prize now", "ok", ""]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(0)
    data = {"max_length": 24, "padding": "dynamic"}
    module = GPTClassifier(TINY_MODEL, CLASSES, {"policy": "all"}, {"position": "flexible"}, data)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.2 * torch.randn_like(param))
    path = tmp_path_factory.mktemp("external") / "model.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return load_classifier(path)


@pytest.fixture(scope="module")
def onnx_model(classifier):
    with torch.no_grad():
        return to_onnx_model(classifier)


def probabilities(predictions):
    return np.array([[p.probabilities[c] for c in CLASSES] for p in predictions])


def test_external_data_is_written_beside_and_read_back(classifier, onnx_model, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    size = save_model(onnx.ModelProto.FromString(onnx_model.SerializeToString()), out, external_data=True)
    data = tmp_path / "model.onnx.data"
    assert out.stat().st_size + data.stat().st_size == size
    assert data.stat().st_size > 20 * out.stat().st_size  # the weights are in the data file
    assert data.stat().st_mode == out.stat().st_mode  # readable by whoever may read the model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]  # no leftovers
    external = [t.name for t in onnx.load(out, load_external_data=False).graph.initializer if t.external_data]
    assert len(external) > 10
    expected = probabilities(predict_texts(TEXTS, classifier))
    np.testing.assert_allclose(probabilities(load_predictor(out).predict(TEXTS)), expected, atol=1e-4)


def test_external_data_is_chosen_by_size_at_the_limit(onnx_model):
    model = onnx_model
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    assert not needs_external_data(model, limit=size)
    assert needs_external_data(model, limit=size - 1)
    assert not needs_external_data(model)  # the tiny model: one file
