"""Explanations: on a task where one keyword decides the label, that keyword is the top attribution;
token offsets map back to the original text; a checkpoint and its ONNX export explain alike."""

import csv
import itertools
import random

import numpy as np
import pytest
from helpers import TINY_OVERRIDES, train_config

from gpt_classifier.deploy.explain import explain_texts
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.task import train

WORDS = ["see", "you", "at", "lunch", "home", "bus", "call", "later", "work", "film", "game", "coffee"]
KEYWORD = "prize"


def keyword_rows(count: int, seed: int) -> list[tuple[str, str]]:
    """Filler words, and in half of the texts the keyword at a random place: it alone makes spam."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(3, 9))
        spam = rng.random() < 0.5
        if spam:
            words.insert(rng.randint(0, len(words)), KEYWORD)
        rows.append((" ".join(words), "spam" if spam else "ham"))
    return rows


@pytest.fixture(scope="module")
def keyword_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyword")
    with open(folder / "messages.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *keyword_rows(400, seed=0)])
    settings = [
        *TINY_OVERRIDES,
        "trainer=cpu",
        "trainer.max_epochs=4",
        "data=csv",
        f"data.path={folder / 'messages.csv'}",
        "data.batch_size=16",
        "data.padding=dynamic",
        "classifier.position=flexible",
        "finetune=all",
        "optimizer.lr=3e-3",
        "logger=none",
    ]
    with train_config(settings, folder / "run") as cfg:
        metrics = train(cfg)
    assert metrics["test_acc"] > 0.95  # it learned the rule
    return next((folder / "run" / "checkpoints").glob("epoch*.ckpt"))


def test_the_keyword_is_the_top_attribution(keyword_checkpoint):
    texts = [text for text, label in keyword_rows(120, seed=1) if label == "spam"]
    explanations = explain_texts(texts, load_classifier(keyword_checkpoint))
    hits = []
    for text, explanation in zip(texts, explanations, strict=True):
        top = max(explanation.tokens, key=lambda t: t.score)
        start = f" {text} ".index(f" {KEYWORD} ")  # where the keyword starts in `text`
        hits.append(start - 1 <= top.start and top.end <= start + len(KEYWORD))  # a token of " prize"
    assert len(texts) > 40 and sum(hits) / len(hits) >= 0.95, hits


@pytest.mark.parametrize(
    "text",
    [
        "  naïve café ☕ über 🎉!",
        " leading space",
        "tabs\tand\nnew lines",
        "日本語のテキスト",
        "WIN £1000 now",
    ],
)
def test_offsets_map_back_to_the_original_text(keyword_checkpoint, text):
    (explanation,) = explain_texts([text], load_classifier(keyword_checkpoint), max_length=64)
    tokens = explanation.tokens
    assert "".join(t.token for t in tokens) == text
    assert all(text[t.start : t.end] == t.token for t in tokens)
    assert tokens[0].start == 0 and tokens[-1].end == len(text)
    assert all(a.end == b.start for a, b in itertools.pairwise(tokens))


def test_only_the_tokens_read_are_scored(keyword_checkpoint):
    """Texts are truncated as in prediction: the scored tokens are a prefix of the text."""
    text = " ".join(WORDS * 3)
    (explanation,) = explain_texts([text], load_classifier(keyword_checkpoint), max_length=5)
    assert len(explanation.tokens) == 5
    assert text.startswith("".join(t.token for t in explanation.tokens))


def test_onnx_explains_as_the_checkpoint(keyword_checkpoint, tmp_path):
    classifier = load_classifier(keyword_checkpoint)
    export_onnx(classifier, tmp_path / "model.onnx")
    texts = ["see you at the prize lunch", "call me later"]
    ours = explain_texts(texts, classifier)
    onnx = explain_texts(texts, load_predictor(tmp_path / "model.onnx").classifier)
    for a, b in zip(ours, onnx, strict=True):
        assert a.prediction.label == b.prediction.label
        assert [t.token for t in a.tokens] == [t.token for t in b.tokens]
        np.testing.assert_allclose([t.score for t in a.tokens], [t.score for t in b.tokens], atol=1e-4)
