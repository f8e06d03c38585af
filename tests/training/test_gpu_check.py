"""`bench/gpu_check.sh --dry-run`: the GPU check's every stage on the CPU (tiny model, a few steps),
ending in one report with the speed benchmark's modes, their phases and the book's rows."""

import json
import subprocess
import time
from pathlib import Path

import pytest
from helpers import cli_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1000)  # the script's own limit (900 s) decides, with the name of its stage
def test_gpu_check_dry_run(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert [s["status"] for s in report["stages"]] == ["ok"] * 4
    for mode in "abc":
        phases = report["bench"][mode]["phases"]
        assert sum(phases["wall"].values()) == pytest.approx(phases["total_wall"], abs=0.05)  # every second
        assert sum(phases["cpu"].values()) == pytest.approx(phases["total_cpu"], abs=0.05)
        assert (
            0 < phases["total_wall"] < elapsed
        )  # against a clock of its own (tests/training/test_phases.py)
        assert phases["to_first_batch"] > 0 and phases["wall"]["training"] > 0
    assert report["bench"]["b"]["phases"]["wall"]["cache"] > 0  # b and c cache the frozen trunk
    assert report["bench"]["a"]["phases"]["wall"]["cache"] == 0
    assert [(r["preset"], r["epochs"]) for r in report["book"]] == [("book_default", 5), ("book_gpt2_xl", 1)]
    assert not (tmp_path / "book" / "book_gpt2_xl" / "checkpoints").exists()  # deleted after the row
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| start-up |" in markdown and "book_gpt2_xl" in markdown


def test_gpu_check_needs_a_gpu_or_dry_run(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(tmp_path)],
        env={**cli_env(), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gpu_check.sh: no CUDA GPU visible to torch: run it on a GPU machine, or use --dry-run"
    ]
