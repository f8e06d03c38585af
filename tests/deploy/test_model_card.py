"""A model card with every export: the Hugging Face folder's README.md and the card beside an ONNX file
parse with `huggingface_hub.ModelCard`, and their numbers are the run's `metrics.json`."""

import json

import pytest
from helpers import TINY_OVERRIDES, train_config
from huggingface_hub import ModelCard

from gpt_classifier.deploy.hf_export import export_hf
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.task import train


@pytest.fixture(scope="module")
def run(sms_split_dir, tmp_path_factory):
    """One quick epoch of the tiny model on the book's SMS split, read at the last real token."""
    run_dir = tmp_path_factory.mktemp("card_run")
    settings = [
        *TINY_OVERRIDES,
        "trainer=cpu",
        "trainer.max_epochs=1",
        f"data.data_dir={sms_split_dir}",
        "data.max_length=32",
        "data.padding=dynamic",
        "classifier.position=flexible",
        "finetune=last_two_blocks",
        "optimizer.lr=2e-3",
        "logger=none",
    ]
    with train_config(settings, run_dir) as cfg:
        train(cfg)
    checkpoint = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    return run_dir, checkpoint, json.loads((run_dir / "metrics.json").read_text())


def results_by_name(card: ModelCard) -> dict[str, float]:
    return {result.metric_name: result.metric_value for result in card.data.eval_results}


def test_the_hf_card_parses_and_carries_the_run_numbers(run, tmp_path):
    run_dir, checkpoint, metrics = run
    classifier = load_classifier(checkpoint)
    written = export_hf(classifier, tmp_path / "hf", checkpoint=checkpoint)
    assert tmp_path / "hf" / "README.md" in written
    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.labels == ["not spam", "spam"] == classifier.class_names
    numbers = results_by_name(card)
    report = json.loads((run_dir / "classification_report.json").read_text())
    assert numbers["test accuracy"] == metrics["test_acc"]
    assert numbers["validation accuracy"] == metrics["val_acc"]
    assert numbers["train accuracy"] == metrics["train_acc"]
    assert numbers["test loss"] == metrics["test_loss"]
    assert numbers["test ece"] == report["ece"]
    text = card.text
    for words in (
        "`gpt2-tiny` with weights `random`",
        "finetune policy `last_two_blocks`",
        "the last real token",
        f"temperature {metrics['temperature']:.4f}",
        "argmax",
        "UCI SMS Spam Collection",
        f"| test | {100 * metrics['test_acc']:.2f}% |",
        'pipeline("text-classification"',
        "truncated to 32 tokens",
    ):
        assert words in text, words


def test_the_onnx_export_writes_the_same_card_beside(run, tmp_path):
    _, checkpoint, metrics = run
    result = export_onnx(load_classifier(checkpoint), tmp_path / "m.onnx", checkpoint=checkpoint)
    assert result["card"] == tmp_path / "m.card.md"
    card = ModelCard.load(tmp_path / "m.card.md")
    assert results_by_name(card)["test accuracy"] == metrics["test_acc"]
    assert "python predict.py" in card.text and "input_ids" in card.text
