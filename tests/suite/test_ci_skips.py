"""The conftest's CI rule, run on a throwaway test file in a real pytest process: under CI=true a skip
fails unless the test is marked `optional_skip`; outside CI skips stay skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
CONFTEST = TESTS / "conftest.py"

SAMPLE = """
import pytest

def test_required():
    pytest.skip("no widget here")

@pytest.mark.skipif(True, reason="no gadget here")
def test_required_skipif():
    pass

@pytest.mark.optional_skip(reason="the gadget is optional")
def test_optional():
    pytest.skip("no gadget here")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


def copy_suite_settings(folder: Path) -> None:
    """The suite's conftest and its marker (registered in pyproject.toml) in `folder`."""
    shutil.copy(CONFTEST, folder / "conftest.py")
    (folder / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    optional_skip(reason): may skip under CI=true\n"
    )


def run_sample(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    copy_suite_settings(tmp_path)
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(TESTS)  # the conftest's shared helpers
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-rA", "-q"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_a_required_skip_fails(tmp_path):
    """A skip in the test (a failure) and a skipif (an error at setup): both fail the run."""
    result = run_sample(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error"), result.stdout
    assert "FAILED test_sample.py::test_required - required test skipped under CI=true (no widget" in (
        result.stdout
    )
    assert "ERROR test_sample.py::test_required_skipif - required test skipped" in result.stdout
    assert "SKIPPED [1] test_sample.py:13: no gadget here" in result.stdout  # the optional one


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_skips_stay_skips(tmp_path, ci):
    result = run_sample(tmp_path, ci)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 passed, 3 skipped, 1 xfailed"), result.stdout


def test_under_ci_a_skipped_module_fails(tmp_path):
    copy_suite_settings(tmp_path)
    (tmp_path / "test_gone.py").write_text('import pytest\npytest.importorskip("no_such_module_here")\n')
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(TESTS)}
    command = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "test module skipped under CI=true" in result.stdout, result.stdout
