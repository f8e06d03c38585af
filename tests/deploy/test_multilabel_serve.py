"""The server, its page and `predict.py` with a multi-label model: `labels` over their thresholds and
every label's probability, as `predict_texts` gives them (a random-weight checkpoint with set
thresholds); the page in a real browser marks every chosen label."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import PREDICT_PY, TINY_MODEL, finish_cli, start_cli
from test_serve import CHROMIUM, Server, chromium, post, request

from gpt_classifier.deploy.predictor import predict_texts
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier

NAMES = ["billing", "bug", "urgent"]
TEXTS = ["my invoice is wrong", "the app crashes asap", "hello there", "please refund the crash"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights; thresholds put between the texts' probabilities so that labels differ."""
    torch.manual_seed(0)
    data = {"max_length": 16, "padding": "dynamic", "multi_label": True}
    module = GPTClassifier(TINY_MODEL, NAMES, classifier={"position": "flexible"}, data=data)
    probs = predict_texts(TEXTS, module.classifier)
    medians = [sorted(p.probabilities[name] for p in probs)[2] for name in NAMES]
    path = tmp_path_factory.mktemp("ml_serve") / "ml.ckpt"
    decision = {"positive_class": 2, "threshold": None, "thresholds": medians}
    state = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save({**state, "decision": decision}, path)
    return path


def test_server_and_cli_answer_labels_and_probabilities(checkpoint, tmp_path):
    expected = predict_texts(TEXTS, load_classifier(checkpoint))
    assert len({tuple(p.labels) for p in expected}) > 1  # the thresholds split the texts
    cli = start_cli(PREDICT_PY, [str(checkpoint), *TEXTS, "--json"], tmp_path)
    server = Server(checkpoint, "--no-access-log")
    try:
        status, body = post(server.port, {"texts": TEXTS})
        _, health, _ = request(server.port, "GET", "/health")
    finally:
        server.stop()
    assert status == 200, body
    assert health["classes"] == NAMES
    for answer, want in zip(body["predictions"], expected, strict=True):
        assert set(answer) == {"labels", "probabilities"}
        assert answer["labels"] == want.labels
        assert answer["probabilities"] == pytest.approx(want.probabilities, abs=1e-4)
    done = finish_cli(cli)
    assert done.returncode == 0, done
    for line, want in zip(done.stdout.splitlines(), expected, strict=True):
        row = json.loads(line)
        assert row["labels"] == want.labels and row["label"] == "|".join(want.labels)
        assert row["probabilities"] == pytest.approx(want.probabilities, abs=1e-4)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium-driver")
def test_the_page_marks_every_chosen_label(checkpoint):
    """One text: a bar per label, those over their thresholds marked (`.top`), the verdict lists them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    want = next(p for p in predict_texts(TEXTS, load_classifier(checkpoint)) if len(p.labels) >= 1)
    server = Server(checkpoint, "--no-access-log")
    browser = chromium()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait.until(lambda b: "billing" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "texts").send_keys(want.text)
        browser.find_element(By.ID, "classify").click()
        verdict = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#result .label"))
        assert verdict.text == ", ".join(want.labels)
        bars = browser.find_elements(By.CSS_SELECTOR, "#result li")
        assert [bar.find_element(By.CSS_SELECTOR, ".name").text for bar in bars] == NAMES
        names = [bar.find_element(By.CSS_SELECTOR, ".name").text for bar in bars]
        marked = [name for name, bar in zip(names, bars, strict=True) if "top" in bar.get_attribute("class")]
        assert marked == want.labels
    finally:
        browser.quit()
        server.stop()
