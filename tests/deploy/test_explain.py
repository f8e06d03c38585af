"""Explanations: on a task where one keyword decides the label, that keyword is the top attribution;
token offsets map back to the original text; a checkpoint and its ONNX export explain alike; and
`predict.py --explain`, `POST /explain` and the page's explain toggle show them."""

import csv
import itertools
import json
import random

import numpy as np
import pytest
import torch
from helpers import PREDICT_PY, TINY_MODEL, TINY_OVERRIDES, run_many, train_config
from test_serve import CHROMIUM, Server, chromium, request

from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.deploy.explain import explain_texts
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.model.classifier import build_classifier
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


# ---- the command line, the API and the page


def test_predict_cli_explains(keyword_checkpoint, tmp_path):
    text = "see you at the prize lunch"
    jobs = {
        "plain": (PREDICT_PY, [str(keyword_checkpoint), "--explain", text], tmp_path),
        "json": (PREDICT_PY, [str(keyword_checkpoint), "--explain", "--json", text], tmp_path),
    }
    results = run_many(jobs)
    plain, as_json = results["plain"], results["json"]
    assert plain.returncode == 0 and as_json.returncode == 0, (plain, as_json)
    label, probability, marked = plain.stdout.strip().split("\t")
    assert label == "spam" and 0.5 < float(probability) <= 1
    assert f"[[{KEYWORD}]]" in marked and "\033" not in marked  # not a terminal: plain markers
    assert marked.replace("[[", "").replace("]]", "") == text
    answer = json.loads(as_json.stdout)
    assert answer["label"] == "spam" and answer["text"] == text
    assert all(text[t["start"] : t["end"]] == t["token"] for t in answer["tokens"])
    assert max(answer["tokens"], key=lambda t: t["score"])["token"].strip() == KEYWORD


@pytest.fixture(scope="module")
def server(keyword_checkpoint):
    running = Server(keyword_checkpoint, "--max-explain-texts", "2", "--no-access-log")
    yield running
    running.stop()


def explain_request(port: int, data) -> tuple[int, dict]:
    status, body, _ = request(port, "POST", "/explain", json.dumps(data).encode())
    return status, body


def test_post_explain(server, keyword_checkpoint):
    texts = ["see you at the prize lunch", "  café ☕ later"]
    status, body = explain_request(server.port, {"texts": texts})
    assert status == 200, body
    expected = explain_texts(texts, load_classifier(keyword_checkpoint))
    for answer, want, text in zip(body["explanations"], expected, texts, strict=True):
        assert answer["label"] == want.prediction.label
        assert answer["probability"] == pytest.approx(want.prediction.probability, abs=1e-4)
        assert [t["token"] for t in answer["tokens"]] == [t.token for t in want.tokens]
        assert all(text[t["start"] : t["end"]] == t["token"] for t in answer["tokens"])
        np.testing.assert_allclose(
            [t["score"] for t in answer["tokens"]], [t.score for t in want.tokens], atol=1e-4
        )
    assert max(body["explanations"][0]["tokens"], key=lambda t: t["score"])["token"].strip() == KEYWORD


def test_post_explain_has_its_own_text_limit(server):
    status, body = explain_request(server.port, {"texts": ["one", "two", "three"]})  # one over
    assert status == 413 and "--max-explain-texts" in body["error"]
    assert explain_request(server.port, {"text": ""})[0] == 422
    assert explain_request(server.port, {"texts": ["one", "two"]})[0] == 200  # exactly at the limit: served


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium-driver")
def test_the_page_explain_toggle_highlights_words(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(f"http://127.0.0.1:{server.port}/")
        browser.find_element(By.ID, "texts").send_keys("see you at the prize lunch")
        browser.find_element(By.ID, "explain").click()
        browser.find_element(By.ID, "classify").click()
        words = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#result .explained .token"))
        assert "".join(word.text for word in words).strip() == "see you at the prize lunch"
        toward = browser.find_elements(By.CSS_SELECTOR, "#result .explained .token.toward")
        strongest = max(toward, key=lambda w: float(w.get_attribute("title").rsplit(" ", 1)[1]))
        assert strongest.text.strip() == KEYWORD
        assert strongest.value_of_css_property("background-color") == "rgba(22, 163, 74, 1)"  # full green
        assert browser.find_element(By.CSS_SELECTOR, "#result .label").text == "spam"
    finally:
        browser.quit()


def test_scores_are_probability_drops_in_the_padded_layout():
    """The book's layout (padded to max_length, read at the last position): each score is the
    predicted class's probability minus its probability with that token replaced by the pad token."""
    torch.manual_seed(0)
    data = {"max_length": 12, "padding": "max_length"}
    classifier = build_classifier(TINY_MODEL, ["ham", "spam"], {"policy": "all"}, {"position": "last"}, data)
    with torch.no_grad():
        for param in classifier.parameters():
            param.add_(0.3 * torch.randn_like(param))
    classifier.eval()
    text = "see you at the prize lunch"
    (explanation,) = explain_texts([text], classifier)
    ids = get_tokenizer().encode_ordinary(text)
    target = classifier.class_names.index(explanation.prediction.label)

    def probability(token_ids):
        padded = torch.full((1, 12), 50256)
        padded[0, : len(token_ids)] = torch.tensor(token_ids)
        with torch.no_grad():
            return float(classifier(padded, torch.tensor([len(token_ids)])).softmax(-1)[0, target])

    assert explanation.prediction.probability == pytest.approx(probability(ids), abs=1e-6)
    drops = [probability([*ids[:i], 50256, *ids[i + 1 :]]) for i in range(len(ids))]
    expected = [probability(ids) - drop for drop in drops]
    np.testing.assert_allclose([t.score for t in explanation.tokens], expected, atol=1e-6)
