"""Without the Hugging Face Hub, pretrained weights fail within seconds, naming the offline choices."""

import socket
import time

import pytest
from huggingface_hub import constants

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.weights import HUB_CHECK_SECONDS, checkpoint_dir


def closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_unreachable_hub_fails_fast_naming_the_offline_choices(empty_cache, monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    started = time.perf_counter()
    with pytest.raises(GPTClassifierError) as caught:
        checkpoint_dir("gpt2-small")
    assert time.perf_counter() - started < HUB_CHECK_SECONDS + 2  # not the library's minute of retries
    message = str(caught.value)
    assert "\n" not in message and f"cannot reach the Hugging Face Hub ({endpoint})" in message
    for choice in ("model.weights=random", "model.weights=/path/to/dir", "HF_HUB_OFFLINE=1"):
        assert choice in message


def test_offline_mode_without_a_cached_copy_says_so(empty_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")  # never asked
    started = time.perf_counter()
    with pytest.raises(GPTClassifierError, match="HF_HUB_OFFLINE is set and gpt2-small is not in the"):
        checkpoint_dir("gpt2-small")
    assert time.perf_counter() - started < 2
