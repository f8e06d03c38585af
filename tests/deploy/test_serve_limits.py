"""`serve.py --max-body-bytes N --max-texts M`: the real server with small limits, probed at their edges.

Exactly at each limit the answer is 200, one past it 413: with a Content-Length, chunked (no
Content-Length), and a declared size over the limit is refused before the body is sent. The limits
come from the flags (a server that ignores them and keeps its defaults fails here).
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_MODEL, adamw, cli_env, quiet_trainer

from gpt_classifier.data.sms import SpamDataModule
from gpt_classifier.training.lightning_module import GPTClassifier

MAX_BODY_BYTES = 300
MAX_TEXTS = 3
PREFIX, SUFFIX = b'{"texts": ["', b'"]}'


@pytest.fixture(scope="module")
def checkpoint(sms_split_dir, tmp_path_factory) -> Path:
    """The tiny model after one training batch: a real `.ckpt` (its numbers do not matter here)."""
    dm = SpamDataModule(data_dir=sms_split_dir, urls=[], batch_size=8)
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    module = GPTClassifier(
        TINY_MODEL,
        dm.class_names,
        data={"max_length": dm.max_length, "padding": dm.padding},
        optimizer=adamw(),
    )
    trainer = quiet_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    path = tmp_path_factory.mktemp("serve_limits") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def port(checkpoint) -> Iterator[int]:
    """A server started with small limits; its port."""
    command = [sys.executable, str(ROOT / "serve.py"), str(checkpoint), "--port", "0", "--no-access-log"]
    command += ["--max-body-bytes", str(MAX_BODY_BYTES), "--max-texts", str(MAX_TEXTS)]
    proc = subprocess.Popen(
        command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    first: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: first.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = first.get(timeout=120)
    except queue.Empty:
        line = ""
    match = re.search(r"on http://127\.0\.0\.1:(\d+)$", line.strip())
    try:
        assert match, f"no address in {line!r}"
        yield int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def body_of(size: int) -> bytes:
    """A valid one-text request body of exactly `size` bytes."""
    body = PREFIX + b"x" * (size - len(PREFIX) - len(SUFFIX)) + SUFFIX
    assert len(body) == size and json.loads(body)
    return body


JSON = {"Content-Type": "application/json"}


def post(port: int, body: bytes, *, chunked: bool = False) -> tuple[int, dict]:
    """POST /predict with a Content-Length, or chunked (in 3 pieces, so no Content-Length)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            pieces = iter([body[:10], body[10:-5], body[-5:]])
            connection.request("POST", "/predict", body=pieces, headers=JSON, encode_chunked=True)
        else:
            connection.request("POST", "/predict", body=body, headers=JSON)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_health_reports_the_limits_from_the_flags(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/health")
    health = json.loads(connection.getresponse().read())
    connection.close()
    assert (health["max_body_bytes"], health["max_texts"]) == (MAX_BODY_BYTES, MAX_TEXTS)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_exactly_at_the_limit_is_served_and_one_byte_more_is_refused(port, chunked):
    status, answer = post(port, body_of(MAX_BODY_BYTES), chunked=chunked)
    assert status == 200 and len(answer["predictions"]) == 1, answer
    status, answer = post(port, body_of(MAX_BODY_BYTES + 1), chunked=chunked)
    assert status == 413, answer
    assert answer["error"] == (
        f"request body over the limit of {MAX_BODY_BYTES} bytes (--max-body-bytes): "
        "send fewer or shorter texts"
    )
    assert post(port, body_of(MAX_BODY_BYTES - 1), chunked=chunked)[0] == 200  # and it keeps serving


@pytest.mark.parametrize("declared", [MAX_BODY_BYTES + 1, 10**12])
def test_a_declared_size_over_the_limit_is_refused_before_the_body_comes(port, declared):
    """Only the headers are sent: the server must answer from the Content-Length alone."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + body_of(MAX_BODY_BYTES)[:50])
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(4096)  # a server waiting for the rest of the body times out here
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 413 "), answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_exactly_max_texts_are_served_and_one_more_is_refused(port, chunked):
    at_limit = json.dumps({"texts": [f"text {i}" for i in range(MAX_TEXTS)]}).encode()
    status, answer = post(port, at_limit, chunked=chunked)
    assert status == 200 and len(answer["predictions"]) == MAX_TEXTS, answer
    over = json.dumps({"texts": [f"text {i}" for i in range(MAX_TEXTS + 1)]}).encode()
    status, answer = post(port, over, chunked=chunked)
    assert status == 413, answer
    assert answer["error"] == (
        f"{MAX_TEXTS + 1} texts is over the limit of {MAX_TEXTS} per request (--max-texts): "
        "send them in several requests"
    )
