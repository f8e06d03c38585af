"""`serve.py`: the real server in its own process, on a free 127.0.0.1 port, with a tiny trained model.

The API against `predict_texts`, every bad request (a 4xx with a reason, one log line, and the next
request still served), a burst of concurrent clients that the server batches, the command line's
errors, and the web page in a real browser (Debian's Chromium driven by Selenium).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import run_many
from serve_helpers import (
    CHROMIUM,
    JSON,
    SERVE_PY,
    Server,
    assert_matches,
    chromium,
    post,
    request,
    train_tiny_checkpoint,
)

from gpt_classifier.atomic_files import replace_atomically
from gpt_classifier.cli.serve import listen
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.deploy.predictor import predict_texts
from gpt_classifier.model.checkpoint import load_classifier

SPAM = "You are a winner you have been specially selected to receive $1000 cash or a $2000 award."
HAM = "Hey, just wanted to check if we're still on for dinner tonight? Let me know!"


@pytest.fixture(scope="module")
def checkpoint(sms_split_dir, tmp_path_factory):
    return train_tiny_checkpoint(sms_split_dir, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def texts(sms_split_dir):
    test_texts = pd.read_csv(sms_split_dir / "test.csv")["Text"].astype(str).tolist()
    long_text = " ".join(test_texts[:30])  # longer than the model's max_length: truncated
    return [SPAM, HAM, long_text, *test_texts[:40]]


@pytest.fixture(scope="module")
def expected(checkpoint, texts):
    """`predict_texts` on the same checkpoint: what every server answer must match."""
    classifier = load_classifier(checkpoint)
    return {p.text: p for p in predict_texts(texts, classifier, get_tokenizer(), "cpu")}


@pytest.fixture(scope="module")
def server(checkpoint):
    running = Server(checkpoint, "--max-wait-ms", "20", "--no-access-log")
    yield running
    running.stop()


def test_health_names_the_classes(server):
    status, body, _ = request(server.port, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok" and body["classes"] == ["not spam", "spam"]
    assert body["max_texts"] == 256 and body["max_body_bytes"] == 1_000_000


def test_predictions_match_predict_texts(server, texts, expected):
    status, body = post(server.port, {"texts": texts})
    assert status == 200
    assert len(body["predictions"]) == len(texts)  # in input order, though batched by length
    for answer, text in zip(body["predictions"], texts, strict=True):
        assert_matches(answer, expected[text])
    assert {p["label"] for p in body["predictions"]} == {"not spam", "spam"}
    status, body = post(server.port, {"text": HAM})
    assert status == 200 and len(body["predictions"]) == 1
    assert_matches(body["predictions"][0], expected[HAM])


TOO_MANY = {"texts": ["hello"] * 257}
BIG_BODY = json.dumps({"texts": ["x" * 1000] * 1100}).encode()  # 1.1 MB


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"texts": ["unclosed"', 400, "body is not valid JSON"),
        (b"\xff\xfe\x00", 400, "body is not UTF-8"),
        ('{"text": "spam?"}'.encode("utf-16"), 400, "body is not UTF-8"),
        (b"", 400, "body is not valid JSON"),
        (b"[" * 100_000, 400, "body is not valid JSON"),  # too deep for Python's parser
        (b'["a list"]', 422, "body is a list"),
        (b"{}", 422, "no texts"),
        (b'{"txt": "hello"}', 422, "unknown key 'txt'"),
        (b'{"text": "a", "texts": ["b"]}', 422, "both text and texts"),
        (b'{"texts": []}', 422, "texts is an empty list"),
        (b'{"texts": "hello"}', 422, "texts is not a list"),
        (b'{"texts": ["ok", 3]}', 422, "texts[1] is a number, not a string"),
        (b'{"texts": ["ok", null]}', 422, "texts[1] is null, not a string"),
        (b'{"text": {"a": 1}}', 422, "text is an object, not a string"),
        (b'{"text": ""}', 422, "text is empty"),
        (b'{"texts": ["ok", "  \\n "]}', 422, "texts[1] is empty"),
        (b'{"text": "\\u0000\\u0000"}', 422, "text is empty (or only invisible characters)"),
        (b'{"texts": ["ok", "\\u200b\\u2060\\ufeff \\u200d"]}', 422, "texts[1] is empty (or only invisible"),
        (b'{"text": "ok \\ud800 then"}', 422, "text has a lone surrogate '\\ud800' at character 3"),
        (json.dumps(TOO_MANY).encode(), 413, "257 texts is over the limit of 256 per request (--max-texts)"),
        (BIG_BODY, 413, "over the limit of 1000000 bytes (--max-body-bytes)"),
    ],
)
def test_bad_requests_get_a_reason_and_the_server_goes_on(server, expected, body, status, reason):
    answer_status, answer, raw = request(server.port, "POST", "/predict", body)
    assert (answer_status, list(answer)) == (status, ["error"]), raw
    assert reason in answer["error"]
    assert "Traceback" not in raw and "\n" not in answer["error"]
    assert server.logged(f"POST /predict -> {status}: {answer['error']}"), server.log[-5:]
    ok_status, ok = post(server.port, {"text": HAM})
    assert ok_status == 200
    assert_matches(ok["predictions"][0], expected[HAM])


def test_a_streamed_body_over_the_limit_is_refused(server):
    """No Content-Length (chunked): the size is checked as the body arrives."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (BIG_BODY[i : i + 65536] for i in range(0, len(BIG_BODY), 65536))
    connection.request("POST", "/predict", body=chunks, headers=JSON, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    assert "--max-body-bytes" in json.loads(response.read())["error"]
    connection.close()
    assert post(server.port, {"text": "still there?"})[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/missing", 404), ("GET", "/predict", 405), ("DELETE", "/", 405)]
)
def test_unknown_routes_get_json_errors(server, method, path, status):
    answer_status, answer, _ = request(server.port, method, path)
    assert answer_status == status and "error" in answer


def test_the_page_needs_nothing_from_elsewhere(server):
    status, _, page = request(server.port, "GET", "/")
    assert status == 200
    assert '<textarea id="texts"' in page and '<button id="classify"' in page
    assert "://" not in page  # no absolute address at all: no CDN, no remote asset
    remote = r"""(src|href)\s*=\s*["']?//|url\(\s*["']?//|@import|XMLHttpRequest|WebSocket|EventSource"""
    assert not re.search(remote, page)
    assert page.count("fetch(") == 1 and "fetch(path, " in page  # one fetch, inside api(path) ...
    called = re.findall(r"""api\((?:explain \? )?(["'`])(.*?)\1(?: : (["'`])(.*?)\3)?""", page)
    addresses = {address for call in called for address in (call[1], call[3]) if address}
    assert len(called) == page.count("api(") - 1  # ... and every call of api names its address literally
    assert addresses == {"/predict", "/explain", "/health"}  # ... on this server


def test_a_burst_of_concurrent_clients_is_batched_without_errors(server, texts, expected):
    """32 clients x 25 requests, one text each, on keep-alive connections: every answer is right."""
    before = request(server.port, "GET", "/stats")[1]
    failures: list[str] = []

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for i in range(25):
            text = texts[(number * 25 + i) % len(texts)]
            try:
                connection.request("POST", "/predict", body=json.dumps({"text": text}), headers=JSON)
                response = connection.getresponse()
                body = json.loads(response.read())
                assert response.status == 200, body
                assert_matches(body["predictions"][0], expected[text])
            except Exception as err:  # collected: a thread's failure must fail the test
                failures.append(f"client {number} request {i}: {err!r}")
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures[:5]
    after = request(server.port, "GET", "/stats")[1]
    assert after["requests"] - before["requests"] == 800
    assert after["items"] - before["items"] == 800
    sizes = {
        int(size): count - before["batch_sizes"].get(size, 0) for size, count in after["batch_sizes"].items()
    }
    sizes = {size: count for size, count in sizes.items() if count}
    assert sum(size * count for size, count in sizes.items()) == 800
    assert sum(sizes.values()) == after["batches"] - before["batches"] < 800  # passes were shared
    assert 1 < max(sizes) <= 32  # --max-batch-size
    assert after["errors"] == before["errors"]


def test_the_listening_socket_is_tcp():
    """IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then, and without it every answer on a
    keep-alive connection waits ~40 ms for a delayed ACK (Nagle)."""
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def damaged_models(checkpoint: Path, folder: Path) -> dict[str, Path]:
    """A checkpoint whose model settings are None, one whose weights have the wrong shapes, and an
    `.onnx` whose pad_token_id metadata is "abc"."""
    import onnx

    from gpt_classifier.deploy.onnx_export import export_onnx

    paths = {name: folder / f"{name}.ckpt" for name in ("model_none", "wrong_shapes")}
    state = torch.load(checkpoint, weights_only=True)
    torch.save(
        {**state, "hyper_parameters": {**state["hyper_parameters"], "model": None}}, paths["model_none"]
    )
    weights = {name: value[..., :1] if value.ndim else value for name, value in state["state_dict"].items()}
    torch.save({**state, "state_dict": weights}, paths["wrong_shapes"])
    paths["bad_onnx_metadata"] = folder / "bad_metadata.onnx"
    export_onnx(load_classifier(checkpoint), paths["bad_onnx_metadata"])
    model = onnx.load(paths["bad_onnx_metadata"])
    for prop in model.metadata_props:
        if prop.key == "pad_token_id":
            prop.value = json.dumps("abc")
    onnx.save(model, paths["bad_onnx_metadata"])
    return paths


@pytest.fixture(scope="module")
def cli_errors(checkpoint, tmp_path_factory):
    """`serve.py` runs that must fail, started together."""
    cwd = tmp_path_factory.mktemp("serve_cli")
    broken = cwd / "broken.ckpt"
    broken.write_bytes(checkpoint.read_bytes()[:5000])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    damaged = damaged_models(checkpoint, cwd)
    (cwd / "a_folder.ckpt").mkdir()
    key_dir = cwd / "key_dir"
    key_dir.mkdir()
    jobs = {
        "missing": [str(cwd / "missing.ckpt")],
        "broken": [str(broken)],
        "directory": [str(cwd / "a_folder.ckpt")],
        "model_none": [str(damaged["model_none"])],
        "wrong_shapes": [str(damaged["wrong_shapes"])],
        "bad_onnx_metadata": [str(damaged["bad_onnx_metadata"])],
        "api_key_file_missing": [str(checkpoint), "--api-key-file", str(cwd / "no-key")],
        "api_key_file_is_a_folder": [str(checkpoint), "--api-key-file", str(key_dir)],
        "port_taken": [str(checkpoint), "--port", str(taken.getsockname()[1])],
        "bad_device": [str(checkpoint), "--device", "teapot"],
    }
    results = run_many({name: (SERVE_PY, args, cwd) for name, args in jobs.items()}, timeout=180)
    taken.close()
    return results


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "missing.ckpt not found"),
        ("broken", "broken.ckpt is unreadable"),
        ("port_taken", "cannot listen on 127.0.0.1:"),
        ("bad_device", "--device 'teapot' is unknown"),
        ("directory", "a_folder.ckpt is a directory: pass the .ckpt file in it"),
        ("model_none", "model_none.ckpt is damaged: its settings and weights do not make a model"),
        ("wrong_shapes", "wrong_shapes.ckpt is damaged: its settings and weights do not make a model"),
        ("bad_onnx_metadata", "metadata pad_token_id='abc' is not a valid pad_token_id"),
        ("api_key_file_missing", "--api-key-file"),
        ("api_key_file_is_a_folder", "is unreadable"),
    ],
)
def test_cli_errors_are_one_line(cli_errors, name, message):
    result = cli_errors[name]
    assert result.returncode == 2, result
    output = result.stdout + result.stderr
    assert "Traceback" not in output, result
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium-driver")
def test_the_page_in_a_real_browser(server, texts, expected, tmp_path):
    """Type a message, click, see its class and probability; several lines give a table.

    `SERVE_SCREENSHOT=docs/serve.png` also saves the page with its answer there (the README's picture).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait.until(lambda b: "not spam, spam" in b.find_element(By.ID, "model").text)
        box = browser.find_element(By.ID, "texts")
        box.send_keys(SPAM)
        browser.find_element(By.ID, "classify").click()
        label = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#result .label"))
        want = expected[SPAM]
        assert label.text == want.label
        probability = browser.find_element(By.CSS_SELECTOR, "#result .probability").text
        assert float(probability.rstrip("%")) == pytest.approx(100 * want.probability, abs=0.051)
        bars = browser.find_elements(By.CSS_SELECTOR, "#result [role=meter]")
        assert [bar.get_attribute("aria-label") for bar in bars] == ["not spam", "spam"]
        shot = tmp_path / "serve.png"
        shot.write_bytes(browser.get_screenshot_as_png())
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if target := os.environ.get("SERVE_SCREENSHOT"):
            replace_atomically(target, lambda f: f.write(shot.read_bytes()))

        box.clear()
        three = [SPAM, HAM, next(t for t in texts[3:] if t == t.strip() and "\n" not in t)]
        box.send_keys("\n".join(three))
        browser.find_element(By.ID, "classify").click()
        rows = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#result tbody tr"))
        assert [row.find_element(By.CSS_SELECTOR, ".text").get_attribute("title") for row in rows] == three
        assert [row.find_element(By.CSS_SELECTOR, ".label").text for row in rows] == [
            expected[text].label for text in three
        ]
        for row, text in zip(rows, three, strict=True):
            shown = float(row.find_element(By.CSS_SELECTOR, ".probability").text.rstrip("%"))
            assert shown == pytest.approx(100 * expected[text].probability, abs=0.051)

        box.clear()
        browser.find_element(By.ID, "classify").click()
        alert = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#result [role=alert]"))
        assert alert.text == "Type a message first."
        # a refusal of the server is shown as its reason
        browser.execute_script("arguments[0].value = arguments[1];", box, "\n".join(["hi"] * 257))
        browser.find_element(By.ID, "classify").click()
        wait.until(lambda b: "257" in b.find_element(By.CSS_SELECTOR, "#result [role=alert]").text)
        assert browser.find_element(By.CSS_SELECTOR, "#result [role=alert]").text == (
            "257 texts is over the limit of 256 per request (--max-texts): send them in several requests"
        )
        # everything the page loaded or fetched came from this server
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(name.startswith(f"http://127.0.0.1:{server.port}/") for name in loaded), loaded
    finally:
        browser.quit()


def test_an_exported_onnx_model_is_served_with_the_same_numbers(checkpoint, texts, expected, tmp_path):
    """`serve.py model.onnx`: ONNX Runtime behind the same API (`predict.load_predictor`)."""
    from gpt_classifier.deploy.onnx_export import export_onnx

    onnx_path = tmp_path / "model.onnx"
    export_onnx(load_classifier(checkpoint), onnx_path)
    running = Server(onnx_path, "--no-access-log")
    try:
        status, body = post(running.port, {"texts": texts})
    finally:
        running.stop()
    assert status == 200
    assert len(body["predictions"]) == len(texts)
    for answer, text in zip(body["predictions"], texts, strict=True):
        assert_matches(answer, expected[text])
