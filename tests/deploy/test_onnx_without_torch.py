"""An exported `.onnx` predicts and serves without torch: ONNX Runtime, numpy, the tokenizer, the web stack.

Every process here runs with torch hidden (`tests/scripts/hide_torch` on PYTHONPATH makes `import
torch` fail and says so on stderr), and gives the torch path's probabilities (1e-5). In CI the same
file also runs in virtual environments without torch (Python 3.10 and 3.13): there
`GPT_CLASSIFIER_TORCH_FREE_MODEL` names a folder that `tests/scripts/make_tiny_onnx.py` wrote
beforehand, and this file imports nothing of torch's (nor conftest.py: `--noconftest`).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
HIDE_TORCH = ROOT / "tests" / "scripts" / "hide_torch"
MARKER = "hide_torch: an import of torch was attempted"
MODEL_VARIABLE = "GPT_CLASSIFIER_TORCH_FREE_MODEL"
TORCH_INSTALLED = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A folder with `model.onnx` and `expected.json`: CI's, or made here where torch is installed."""
    if os.environ.get(MODEL_VARIABLE):
        return Path(os.environ[MODEL_VARIABLE])
    spec = importlib.util.spec_from_file_location("make_tiny_onnx", ROOT / "tests/scripts/make_tiny_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_onnx(tmp_path_factory.mktemp("torch_free"))


@pytest.fixture(scope="module")
def expected(model_dir) -> dict:
    return json.loads((model_dir / "expected.json").read_text(encoding="utf-8"))


def torch_free_env() -> dict[str, str]:
    """This environment with torch hidden from every Python process started in it."""
    paths = [str(HIDE_TORCH), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), "OMP_NUM_THREADS": "1"}


def assert_close(got: list[list[float]], expected: dict) -> None:
    np.testing.assert_allclose(np.array(got), np.array(expected["probabilities"]), atol=1e-5, rtol=0)


class TorchFreeServer:
    """`serve.py MODEL --port 0 ...` with torch hidden; its log collected in a file, read at the end."""

    def __init__(self, model: Path, log: Path, *args: str) -> None:
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "serve.py"), str(model), "--port", "0", *args],
            env=torch_free_env(),
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        line = self.proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert found, f"no address in {line!r}; log:\n{self.log()}"
        self.port = int(found.group(1))
        # uvicorn's access log goes to stdout: read it all, or a full pipe would block the server
        self.output: list[str] = []
        threading.Thread(target=self.output.extend, args=(self.proc.stdout,), daemon=True).start()

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def wait_healthy(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.request("GET", "/health")[1]
            except (ConnectionError, OSError):
                assert self.proc.poll() is None, f"the server exited; log:\n{self.log()}"
                time.sleep(0.2)
        raise AssertionError(f"no /health answer in {timeout} s; log:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM, and the exit status (uvicorn alone re-raises the signal: -SIGTERM)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def test_predict_cli_needs_no_torch(model_dir, expected):
    """`predict.py model.onnx TEXT...` with torch hidden: the torch path's labels and probabilities."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "predict.py"),
            str(model_dir / "model.onnx"),
            "--json",
            *expected["texts"],
        ],
        env=torch_free_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert MARKER not in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["label"] for row in rows] == expected["labels"]
    assert_close([list(row["probabilities"].values()) for row in rows], expected)


def test_serve_needs_no_torch(model_dir, expected, tmp_path):
    """`serve.py model.onnx` with torch hidden answers `/predict` as the torch path, and stops cleanly."""
    server = TorchFreeServer(model_dir / "model.onnx", tmp_path / "serve.log")
    try:
        assert server.wait_healthy()["classes"] == ["not spam", "spam"]
        status, answer = server.request("POST", "/predict", {"texts": expected["texts"]})
        assert status == 200, answer
        assert [p["label"] for p in answer["predictions"]] == expected["labels"]
        assert_close([list(p["probabilities"].values()) for p in answer["predictions"]], expected)
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    assert MARKER not in server.log()


def answering_pids(
    server: TorchFreeServer, enough: Callable[[set[int]], bool], timeout: float = 120
) -> set[int]:
    """The worker pids that answer `/health` (each request a new connection) until `enough` of them."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while not enough(pids) and time.monotonic() < deadline:
        pids.add(server.wait_healthy()["pid"])
        time.sleep(0.02)
    return pids


def test_serve_workers_share_the_port(model_dir, expected, tmp_path):
    """`--workers 2`: two processes answer on one port, each with its model; one that dies is
    replaced with the same settings; SIGTERM ends them all."""
    server = TorchFreeServer(model_dir / "model.onnx", tmp_path / "workers.log", "--workers", "2")
    pids: set[int] = set()
    try:
        pids = answering_pids(server, lambda seen: len(seen) == 2)
        assert len(pids) == 2, f"only worker {pids} answered; log:\n{server.log()}"
        assert server.proc.pid not in pids  # the supervisor only supervises
        status, answer = server.request("POST", "/predict", {"texts": expected["texts"]})
        assert status == 200, answer
        assert_close([list(p["probabilities"].values()) for p in answer["predictions"]], expected)
        os.kill(min(pids), signal.SIGKILL)
        replacement = answering_pids(server, lambda seen: bool(seen - pids)) - pids
        assert replacement, f"no worker replaced {min(pids)}; log:\n{server.log()}"
        pids |= replacement
    finally:
        exit_status = server.stop()
        left_running = [pid for pid in pids if still_running(pid)]
        for pid in left_running:
            os.kill(pid, signal.SIGKILL)
    assert exit_status == 0
    assert not left_running, f"workers {left_running} outlived the supervisor; log:\n{server.log()}"
    assert MARKER not in server.log()


def still_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_checkpoint_without_torch_is_one_line(tmp_path):
    """Without torch, a `.ckpt` is refused in one line that says to predict an exported `.onnx`."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), str(tmp_path / "model.ckpt"), "hi"],
        env=torch_free_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("predict and serve an exported .onnx")
    assert "Traceback" not in result.stderr


@pytest.mark.optional_skip(reason="runs in CI's torch-free virtual environments (.ci/run), not the main one")
@pytest.mark.skipif(not os.environ.get(MODEL_VARIABLE), reason="CI's virtual environment without torch only")
def test_this_environment_has_no_torch():
    assert not TORCH_INSTALLED


@pytest.mark.skipif(not TORCH_INSTALLED, reason="needs torch, to see it is not imported")
def test_onnx_path_leaves_installed_torch_unimported(model_dir):
    """Where torch is installed, predicting and building the server for an `.onnx` still never import it."""
    script = (
        "import sys\n"
        "from gpt_classifier.cli import predict, serve\n"
        "from gpt_classifier.deploy.server import create_app\n"
        "from gpt_classifier.deploy.workers import app_from_env\n"
        "from gpt_classifier.deploy.predictor import load_predictor\n"
        f"create_app(load_predictor({str(model_dir / 'model.onnx')!r}))\n"
        f"assert predict.main([{str(model_dir / 'model.onnx')!r}, 'hi']) == 0\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("no torch")


@pytest.mark.skipif(not TORCH_INSTALLED, reason="compares with torch")
def test_numpy_softmax_and_decide_equal_torch():
    """The ONNX path's numpy twins give torch's probabilities and decisions, at the threshold's edge too."""
    import torch

    from gpt_classifier.deploy import probabilities as numpy_twins
    from gpt_classifier.model.classifier import decide

    logits = np.random.default_rng(0).normal(scale=30, size=(64, 3)).astype(np.float32)
    np.testing.assert_allclose(
        numpy_twins.softmax(logits), torch.from_numpy(logits).softmax(-1).numpy(), atol=1e-6, rtol=0
    )
    two = np.array([[0.3, 0.7], [0.7, 0.3], [0.5, 0.5], [0.6, 0.4], [0.40000001, 0.59999999]], np.float32)
    for probs in (two, numpy_twins.softmax(logits)):
        for positive_class in (0, 1):
            for threshold in (None, 0.0, 0.3, 0.5, 0.6, 1.0):
                got = numpy_twins.decide(probs, positive_class=positive_class, threshold=threshold)
                want = decide(torch.from_numpy(probs), positive_class=positive_class, threshold=threshold)
                np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.skipif(not TORCH_INSTALLED, reason="compares with torch")
def test_numpy_padding_is_trainings_padding():
    """`pad_ids` (numpy) pads as training's `pad_batch`: at the end, to the longest or to `width`."""
    from gpt_classifier.data.encoding import pad_batch
    from gpt_classifier.data.token_ids import pad_ids

    rows = [[5, 6, 7], [8], np.array([9, 10], dtype=np.int32)]
    input_ids, lengths = pad_ids(rows, 0)
    np.testing.assert_array_equal(input_ids, [[5, 6, 7], [8, 0, 0], [9, 10, 0]])
    np.testing.assert_array_equal(lengths, [3, 1, 2])
    assert input_ids.dtype == lengths.dtype == np.int64
    wide, _ = pad_ids(rows, 50256, width=5)
    assert wide.shape == (3, 5) and (wide[1, 1:] == 50256).all()
    tensors = pad_batch(rows, 50256, width=5)
    np.testing.assert_array_equal(tensors[0].numpy(), wide)
    np.testing.assert_array_equal(tensors[1].numpy(), [3, 1, 2])


def test_threads_per_worker_split_the_cores(monkeypatch):
    """`cores // N` threads per worker, at least one, from the cores this process may run on."""
    from gpt_classifier.deploy import workers

    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [workers.threads_per_worker(n) for n in (1, 2, 3, 15, 16, 17, 64)] == [16, 8, 5, 1, 1, 1, 1]


def test_worker_threads_reach_onnx_runtime(model_dir):
    """A worker's share of the cores becomes ONNX Runtime's intra-op threads."""
    from gpt_classifier.deploy.predictor import load_predictor

    session = load_predictor(model_dir / "model.onnx", "cpu", threads=3).classifier.session
    assert session.get_session_options().intra_op_num_threads == 3


@pytest.mark.skipif(not TORCH_INSTALLED, reason="the torch path")
def test_worker_threads_reach_torch(tmp_path):
    """A worker's share of the cores becomes torch's intra-op threads, for a `.ckpt`."""
    import torch
    from helpers import TINY_MODEL

    from gpt_classifier.deploy.predictor import load_predictor
    from gpt_classifier.training.lightning_module import GPTClassifier

    module = GPTClassifier(TINY_MODEL, ["not spam", "spam"], data={"max_length": 8})
    path = tmp_path / "tiny.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    threads = torch.get_num_threads()
    try:
        load_predictor(path, "cpu", threads=threads + 1)
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
