"""`serve.py`'s life: ready after warm-up, SIGTERM drains (in-flight requests answered, bounded by
--graceful-timeout, exit 0), clients gone before their batch cost nothing, and running out of file
descriptors gives a few log lines, not a flood. Each test runs its own server process."""

from __future__ import annotations

import asyncio
import http.client
import json
import resource
import signal
import socket
import threading
import time

import pytest
from serve_helpers import JSON, Server, request, train_tiny_checkpoint

from gpt_classifier.deploy.server import Readiness


@pytest.fixture(scope="module")
def checkpoint(sms_split_dir, tmp_path_factory):
    return train_tiny_checkpoint(sms_split_dir, tmp_path_factory.mktemp("serve_lifecycle"))


def post_in_thread(port: int, text: str) -> tuple[threading.Thread, list]:
    """POST one text from a thread; the answer (status, body) or the error lands in the list."""
    answers: list = []

    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("POST", "/predict", body=json.dumps({"text": text}), headers=JSON)
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
        except Exception as err:  # collected: the test asserts on it
            answers.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


def test_sigterm_answers_what_is_in_flight_then_exits_0(checkpoint):
    server = Server(checkpoint, "--max-wait-ms", "1500", "--no-access-log")  # a request waits 1.5 s
    assert request(server.port, "GET", "/ready")[1] == {"status": "ready"}
    thread, answers = post_in_thread(server.port, "are we still on for dinner?")
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    thread.join(timeout=30)
    assert server.proc.wait(timeout=30) == 0
    assert answers and answers[0][0] == 200, answers
    assert server.logged("draining") and not server.logged("Traceback", timeout=0)


def test_the_graceful_timeout_bounds_the_drain(checkpoint):
    server = Server(checkpoint, "--max-wait-ms", "60000", "--graceful-timeout", "1", "--no-access-log")
    thread, _ = post_in_thread(server.port, "this one waits a minute for company")
    time.sleep(0.5)
    started = time.perf_counter()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert time.perf_counter() - started < 10
    thread.join(timeout=30)


def test_a_request_whose_client_has_gone_is_not_computed(checkpoint):
    server = Server(checkpoint, "--max-wait-ms", "1000", "--no-access-log")
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        body = json.dumps({"text": "I will not wait"}).encode()
        head = "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        time.sleep(0.3)
        sock.close()
        assert server.logged("-> 499: client disconnected while waiting for its answer")
        time.sleep(1.5)  # past --max-wait-ms: its batch would have run
        stats = request(server.port, "GET", "/stats")[1]
        assert (stats["requests"], stats["batches"]) == (1, 0)
    finally:
        server.stop()


def limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))


def test_running_out_of_file_descriptors_logs_a_few_lines_and_recovers(checkpoint):
    server = Server(checkpoint, "--no-access-log", preexec_fn=limit_open_files)
    try:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(150)]
        time.sleep(3)
        for sock in held:
            sock.close()
        time.sleep(1.5)  # asyncio retries accepting after a second
        assert request(server.port, "GET", "/live")[0] == 200
        assert server.logged("Too many open files")
        assert len(server.log) < 20, server.log
        assert not any("Traceback" in line for line in server.log)
    finally:
        server.stop()


def test_readiness_names_why_not():
    readiness = Readiness()
    assert "warming up" in readiness.reason_not_ready()

    async def stopped_batcher() -> str | None:
        readiness.batcher_task = asyncio.create_task(asyncio.sleep(0))
        readiness.warmed = True
        await readiness.batcher_task
        return readiness.reason_not_ready()

    assert "the batcher has stopped" in asyncio.run(stopped_batcher())
    readiness.draining = True
    assert "draining" in readiness.reason_not_ready()
