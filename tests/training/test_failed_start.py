"""A run that fails before training says why in one line, quickly, and leaves no run folder behind."""

import socket

from helpers import TINY_OVERRIDES, TRAIN_PY, run_many


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failed_starts_leave_no_stub_folder(sms_split_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    base = ["trainer=cpu", "logger=none", f"data.data_dir={sms_split_dir}"]
    runs = {
        "offline": ["model.weights=pretrained", *base],  # gpt2-small from the Hub
        "missing_file": [*TINY_OVERRIDES, *base, "data=csv", f"data.path={tmp_path / 'missing.csv'}"],
        "bad_lr": [*TINY_OVERRIDES, *base, "optimizer.lr=-1"],
    }
    jobs = {
        name: (TRAIN_PY, [*args, f"hydra.run.dir={tmp_path / name}"], tmp_path) for name, args in runs.items()
    }
    results = run_many(jobs)
    expected = {
        "offline": "cannot reach the Hugging Face Hub",
        "missing_file": "missing.csv not found",
        "bad_lr": "optimizer.lr=-1 must be positive",
    }
    for name, result in results.items():
        output = result.stdout + result.stderr
        assert result.returncode == 2, result
        assert expected[name] in output, result
        assert "Traceback" not in output and "Retrying" not in output, result
        assert not (tmp_path / name).exists(), (
            f"{name}: {sorted(p.name for p in (tmp_path / name).iterdir())}"
        )
    assert "model.weights=random" in results["offline"].stdout
