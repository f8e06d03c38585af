"""What the serving tests share: a tiny trained checkpoint, `serve.py` in a subprocess, requests."""

from __future__ import annotations

import http.client
import json
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_MODEL, adamw, cli_env, quiet_trainer

from gpt_classifier.data.sms import SpamDataModule
from gpt_classifier.training.lightning_module import GPTClassifier

SERVE_PY = ROOT / "serve.py"
JSON = {"Content-Type": "application/json"}
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


TRAINED: dict[Path, Path] = {}  # split folder -> its checkpoint: the serving test modules share one


def train_tiny_checkpoint(sms_split_dir: Path, folder: Path) -> Path:
    """The tiny model, book settings, one epoch: a real `.ckpt` written by Lightning (into `folder`
    the first time; later calls in the session return that file, which no test changes)."""
    if sms_split_dir in TRAINED:
        return TRAINED[sms_split_dir]
    dm = SpamDataModule(data_dir=sms_split_dir, urls=[], batch_size=16)
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    module = GPTClassifier(
        TINY_MODEL,
        dm.class_names,
        finetune={"policy": "last_block"},
        classifier={"position": "last"},
        data={"max_length": dm.max_length, "padding": dm.padding},
        optimizer=adamw(2e-3),
    )
    trainer = quiet_trainer(limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    path = folder / "tiny.ckpt"
    trainer.save_checkpoint(path)
    TRAINED[sms_split_dir] = path
    return path


class Server:
    """`python serve.py CKPT --port 0 ...` in a subprocess; its stderr (the log) collected in `log`."""

    def __init__(self, checkpoint: Path, *args: str, env: dict[str, str] | None = None, **popen) -> None:
        command = [sys.executable, str(SERVE_PY), str(checkpoint), "--port", "0", *args]
        self.proc = subprocess.Popen(
            command,
            env={**cli_env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )
        self.log: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout, lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.log.append), daemon=True).start()
        try:
            first = lines.get(timeout=120)
        except queue.Empty:
            first = ""
        match = re.search(r"on http://127\.0\.0\.1:(\d+)$", first)
        assert match, f"no address in {first!r}; log: {self.log}"
        self.port = int(match.group(1))

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    def logged(self, text: str, timeout: float = 10) -> bool:
        """Whether a log line contains `text` (waiting for the reader thread to catch up)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.log):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def request(port: int, method: str, path: str, body: bytes | None = None, **headers) -> tuple[int, dict, str]:
    """One request on a new connection: (status, JSON body or {}, raw body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    if body is not None:
        headers = {"Content-Type": "application/json", **headers}
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read().decode()
    finally:
        connection.close()
    is_json = response.getheader("content-type", "").startswith("application/json")
    return response.status, json.loads(raw) if is_json else {}, raw


def post(port: int, data) -> tuple[int, dict]:
    status, body, _ = request(port, "POST", "/predict", json.dumps(data).encode())
    return status, body


def assert_matches(answer: dict, want) -> None:
    """One prediction of the API against `predict_texts`'s, to 1e-4."""
    assert answer["label"] == want.label
    assert answer["probability"] == pytest.approx(want.probability, abs=1e-4)
    assert answer["probabilities"].keys() == want.probabilities.keys()
    for name, p in want.probabilities.items():
        assert answer["probabilities"][name] == pytest.approx(p, abs=1e-4)


def chromium():
    """Headless Chromium through Debian's chromedriver (Selenium must not try to download one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=900,720",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def call(port: int, method: str, path: str, body: bytes | None = None, key: str | None = None, **headers):
    """One request on a new connection, JSON by default and with the key: (status, headers, JSON or text)."""
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    if key is not None:
        headers.setdefault("Authorization", f"Bearer {key}")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read().decode()
    finally:
        connection.close()
    is_json = response.getheader("content-type", "").startswith("application/json")
    return response.status, dict(response.getheaders()), json.loads(raw) if is_json else raw
