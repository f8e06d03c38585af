"""`serve.py` as operators run it: every request passes the guard (API key, Host, Content-Type), carries
a request id, is counted in /metrics; probes; connection limits and timeouts; hostile texts.

One real server process with a key and short timeouts serves most tests (see `guarded`).
"""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import CHROMIUM, Server, chromium, train_tiny_checkpoint
from serve_helpers import call as call_server

from gpt_classifier.cli.serve import parse_args, security_of

KEY = "s3cret-key-for-tests"
PANIC_TEXT = " " * 999_999 + "x"  # whole, tiktoken overflows its stack on it: a Rust panic


@pytest.fixture(scope="module")
def checkpoint(sms_split_dir, tmp_path_factory):
    return train_tiny_checkpoint(sms_split_dir, tmp_path_factory.mktemp("serve_production"))


@pytest.fixture(scope="module")
def guarded(checkpoint, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(KEY + "\n")
    running = Server(
        checkpoint,
        *("--api-key-file", str(key_file), "--max-body-bytes", "2000000", "--limit-concurrency", "4"),
        *("--timeout-keep-alive", "1", "--header-timeout", "1", "--body-timeout", "1"),
    )
    yield running
    running.stop()


def call(*args, key: str | None = KEY, **headers):
    """`serve_helpers.call` with this module's key by default."""
    return call_server(*args, key=key, **headers)


def predict(port: int, texts: list[str], **headers):
    return call(port, "POST", "/predict", json.dumps({"texts": texts}).encode(), **headers)


def test_a_text_that_made_tiktoken_panic_is_classified_and_the_next_one_too(guarded):
    status, _, body = predict(guarded.port, [PANIC_TEXT])
    assert status == 200 and body["predictions"][0]["label"] in ("spam", "not spam")
    started = time.perf_counter()
    assert predict(guarded.port, ["hi"])[0] == 200
    assert time.perf_counter() - started < 5


def test_the_key_is_required_except_for_the_page_and_probes(guarded):
    status, headers, body = predict(guarded.port, ["hi"], key=None)
    assert status == 401 and "missing API key" in body["error"] and headers["www-authenticate"] == "Bearer"
    status, _, body = predict(guarded.port, ["hi"], key="wrong")
    assert (status, body["error"]) == (401, "wrong API key")
    status, _, body = predict(guarded.port, ["hi"], Authorization=f"Basic {KEY}")
    assert status == 401 and "Bearer" in body["error"]
    for path in ("/stats", "/health", "/metrics"):
        assert call(guarded.port, "GET", path, key=None)[0] == 401, path
        assert call(guarded.port, "GET", path)[0] == 200, path
    for path in ("/", "/live", "/ready"):
        assert call(guarded.port, "GET", path, key=None)[0] == 200, path
    assert guarded.logged("POST /predict -> 401: wrong API key")


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=utf-16", 415),
        ("", 415),
    ],
)
def test_posts_must_be_json(guarded, content_type, status):
    answer_status, _, body = call(
        guarded.port, "POST", "/predict", b'{"text": "x"}', Content_Type=content_type
    )
    assert answer_status == status, body
    if status == 415:
        assert "send 'Content-Type: application/json'" in body["error"]


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),
        ("localhost:8000", 200),
        ("[::1]:80", 200),
        ("evil.example", 400),
        ("127.0.0.1.evil.example:80", 400),
    ],
)
def test_the_host_header_must_name_this_server(guarded, host, status):
    answer_status, _, body = call(guarded.port, "GET", "/health", Host=host)
    assert answer_status == status, body
    if status == 400:
        assert "is not served here" in body["error"] and "--allowed-hosts" in body["error"]


def test_request_ids_are_echoed_or_made_and_logged(guarded):
    _, headers, _ = predict(guarded.port, ["hi"], X_Request_ID="abc-123")
    assert headers["x-request-id"] == "abc-123"
    _, made, _ = call(guarded.port, "GET", "/missing")
    _, other, _ = call(guarded.port, "GET", "/live")
    assert len(made["x-request-id"]) == 32 and made["x-request-id"] != other["x-request-id"]
    _, refused, _ = predict(guarded.port, ["hi"], key="wrong", X_Request_ID="bad id with spaces\x7f")
    assert len(refused["x-request-id"]) == 32  # not echoed: not a sane id
    assert guarded.logged('"POST /predict" 200') and guarded.logged("[abc-123]")
    assert guarded.logged(f"GET /missing -> 404: Not Found [{made['x-request-id']}]")


def metrics(port: int) -> dict[str, dict]:
    """/metrics parsed: family name -> {(sample name, labels as a sorted tuple): value}."""
    status, _, text = call(port, "GET", "/metrics")
    assert status == 200
    return {
        family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def test_metrics_count_requests_latency_batches_and_texts(guarded):
    before = metrics(guarded.port)
    ok = ("gpt_classifier_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "200")))
    for _ in range(3):
        assert predict(guarded.port, ["one", "two"])[0] == 200
    call(guarded.port, "POST", "/predict", b"{}")
    after = metrics(guarded.port)
    assert after["gpt_classifier_requests"][ok] - before["gpt_classifier_requests"].get(ok, 0) == 3
    bad = ("gpt_classifier_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "422")))
    assert after["gpt_classifier_requests"][bad] >= 1
    texts = ("gpt_classifier_texts_total", ())
    assert after["gpt_classifier_texts"][texts] - before["gpt_classifier_texts"][texts] == 6
    count = ("gpt_classifier_request_duration_seconds_count", (("route", "/predict"),))
    assert after["gpt_classifier_request_duration_seconds"][count] >= 4
    assert after["gpt_classifier_batch_size"][("gpt_classifier_batch_size_count", ())] >= 3
    assert after["gpt_classifier_queue_depth"][("gpt_classifier_queue_depth", ())] == 0
    assert after["gpt_classifier_ready"][("gpt_classifier_ready", ())] == 1
    info = {key: value for family in after.values() for key, value in family.items()}
    ((_, labels),) = [key for key in info if key[0] == "gpt_classifier_model_info"]
    assert dict(labels) == {"backend": "torch", "checkpoint": "tiny.ckpt", "classes": "not spam,spam"}


def test_probes(guarded):
    assert call(guarded.port, "GET", "/live")[2] == {"status": "alive"}
    assert call(guarded.port, "GET", "/ready")[2] == {"status": "ready"}


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (reading whatever it answers first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_silent_and_trickling_connections_are_closed(guarded):
    silent, trickling = connect(guarded.port), connect(guarded.port)
    trickling.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    assert closed_within(silent, 4) and closed_within(trickling, 4)
    assert call(guarded.port, "GET", "/live")[0] == 200


def test_a_slow_body_gets_408(guarded):
    sock = connect(guarded.port)
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
    sock.sendall(f"{head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode() + b'{"te')
    sock.settimeout(10)
    answer = b""
    while b"--body-timeout" not in answer and (chunk := sock.recv(65536)):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer, answer


def test_over_the_concurrency_limit_gets_503(guarded):
    held = [connect(guarded.port) for _ in range(4)]  # --limit-concurrency 4
    try:
        time.sleep(0.2)
        status = call(guarded.port, "GET", "/live")[0]
    finally:
        for sock in held:
            sock.close()
    assert status == 503
    time.sleep(0.2)
    assert call(guarded.port, "GET", "/live")[0] == 200


def test_a_client_gone_mid_body_is_one_counted_line(guarded):
    before = len(guarded.log)
    sock = connect(guarded.port)
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
    sock.sendall(f"{head}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"te')
    time.sleep(0.2)
    sock.close()
    assert guarded.logged("-> 499: client disconnected while sending its body")
    time.sleep(0.5)
    new = guarded.log[before:]
    assert not any("Traceback" in line for line in new), new
    assert len([line for line in new if "disconnected" in line]) == 1
    count = metrics(guarded.port)["gpt_classifier_client_disconnects"]
    assert count[("gpt_classifier_client_disconnects_total", ())] >= 1


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GPT_CLASSIFIER_API_KEY", "from-env")
    assert security_of(parse_args(["m.ckpt"])).api_key == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    args = parse_args(["m.ckpt", "--api-key-file", str(tmp_path / "key"), "--allowed-hosts", "a.example,b"])
    assert (security_of(args).api_key, security_of(args).allowed_hosts) == ("from-file", ["a.example", "b"])
    monkeypatch.delenv("GPT_CLASSIFIER_API_KEY")
    with caplog.at_level(logging.WARNING):
        open_to_all = security_of(parse_args(["m.ckpt", "--host", "0.0.0.0"]))
    assert open_to_all.api_key is None and open_to_all.allowed_hosts == ["*"]
    assert "without an API key" in caplog.text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium-driver")
def test_the_page_asks_for_the_key_once(guarded):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(f"http://127.0.0.1:{guarded.port}/")
        prompt = wait.until(expected_conditions.alert_is_present())
        assert "API key" in prompt.text
        prompt.send_keys(KEY)
        prompt.accept()
        wait.until(lambda b: "not spam, spam" in b.find_element(By.ID, "model").text)
        assert browser.execute_script("return sessionStorage.getItem('apiKey')") == KEY
        browser.find_element(By.ID, "texts").send_keys("are we still on for dinner?")
        browser.find_element(By.ID, "classify").click()
        label = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#result .label"))
        assert label.text in ("spam", "not spam")
        browser.refresh()  # the key is kept for the tab: no second question
        wait.until(lambda b: "not spam, spam" in b.find_element(By.ID, "model").text)
    finally:
        browser.quit()


@pytest.mark.parametrize(("padding", "status"), [(15_000, 200), (16_500, 431), (100_000, 431)])
def test_headers_over_max_header_bytes_get_431(guarded, padding, status):
    """--max-header-bytes 16384 (the default): the request line and headers together."""
    answer_status, _, body = call(guarded.port, "GET", "/live", X_Padding="p" * padding)
    assert answer_status == status, body
    if status == 431:
        assert "over the limit of 16384 (--max-header-bytes)" in body["error"]
