"""Scoring resumes: a killed run's finished chunks are reused, and the final file is the same."""

import os
import signal
import time

import pandas as pd
import pytest
from helpers import PREDICT_PY, finish_cli, start_cli, write_random_checkpoint

from gpt_classifier.deploy.scoring import FileOptions, ScoringOptions, score_file
from gpt_classifier.errors import GPTClassifierError


class Crash(Exception):
    """Raised from the bad-row report: the run dies mid-file, after some chunks are saved."""


def corpus(path, rows: int, bad_row: int | None = None):
    texts = [f"message {i}\nwith a second line, and a comma" * (1 + i % 5) for i in range(rows)]
    if bad_row is not None:
        texts[bad_row] = ""
    pd.DataFrame({"id": range(rows), "text": texts}).to_csv(path, index=False)
    return path


def crash_at_bad_row(line: str) -> None:
    raise Crash(line)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("resume") / "model.ckpt", ["ham", "spam"])


def test_rerun_after_a_crash_reuses_chunks_and_writes_the_same_file(model_path, tmp_path):
    source = corpus(tmp_path / "in.csv", 50, bad_row=33)  # chunk 3 of 10-row chunks
    options, file_options = ScoringOptions(), FileOptions(chunk_rows=10)
    reference = tmp_path / "reference.csv"
    score_file(model_path, source, reference, options, file_options, report=lambda line: None)
    output = tmp_path / "out.csv"
    with pytest.raises(Crash, match="row 35: empty text"):  # header row 1, id 33 on row 35
        score_file(model_path, source, output, options, file_options, report=crash_at_bad_row)
    assert not output.exists()
    parts = sorted(p.name for p in (tmp_path / "out.csv.parts").iterdir())
    finished = [f"000000{index}.{kind}" for index in range(3) for kind in ("csv", "json")]
    assert parts == [*finished, "manifest.json"]
    summary = score_file(model_path, source, output, options, file_options, report=lambda line: None)
    assert summary.resumed_chunks == 3 and summary.texts == 49 and summary.bad_rows == 1
    assert output.read_bytes() == reference.read_bytes()
    assert not (tmp_path / "out.csv.parts").exists()


@pytest.mark.parametrize("change", ["input", "options", "model"])
def test_chunks_of_another_input_model_or_options_are_not_reused(model_path, tmp_path, change):
    source = corpus(tmp_path / "in.csv", 50, bad_row=33)
    options, file_options = ScoringOptions(), FileOptions(chunk_rows=10)
    output = tmp_path / "out.csv"
    with pytest.raises(Crash):
        score_file(model_path, source, output, options, file_options, report=crash_at_bad_row)
    if change == "input":
        corpus(source, 50, bad_row=34)  # same size, other content
    elif change == "options":
        options = ScoringOptions(column_prefix="p_")
    else:
        model_path = write_random_checkpoint(tmp_path / "other.ckpt", ["ham", "spam"])
    summary = score_file(model_path, source, output, options, file_options, report=lambda line: None)
    assert summary.resumed_chunks == 0 and summary.texts == 49


def test_a_folder_that_is_not_ours_is_left_alone(model_path, tmp_path):
    source = corpus(tmp_path / "in.csv", 5)
    (tmp_path / "out.csv.parts").mkdir()
    (tmp_path / "out.csv.parts" / "mine.txt").write_text("keep me")
    with pytest.raises(GPTClassifierError, match="holds no scoring manifest: move it away"):
        score_file(model_path, source, tmp_path / "out.csv", ScoringOptions())
    assert (tmp_path / "out.csv.parts" / "mine.txt").read_text() == "keep me"


def test_killed_predict_process_resumes_to_the_identical_file(model_path, tmp_path):
    """A real `predict.py --input` killed with SIGKILL mid-run; the same command again finishes the
    file, byte for byte as a run that was never interrupted."""
    source = corpus(tmp_path / "in.csv", 3000)
    args = [str(model_path), "--input", str(source), "--chunk-rows", "50"]
    reference = start_cli(PREDICT_PY, [*args, "--output", str(tmp_path / "reference.parquet")], tmp_path)
    output = tmp_path / "scored.parquet"
    _, proc = start_cli(PREDICT_PY, [*args, "--output", str(output)], tmp_path)
    parts = tmp_path / "scored.parquet.parts"
    deadline = time.monotonic() + 180
    while len(list(parts.glob("*.json"))) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # manifest + 3 finished chunks
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not output.exists()
    done_before = len(list(parts.glob("0*.json")))
    rerun = finish_cli(start_cli(PREDICT_PY, [*args, "--output", str(output)], tmp_path))
    assert rerun.returncode == 0, rerun
    assert f"{done_before} chunks done before" in rerun.stderr, rerun
    assert "scored 3000 texts" in rerun.stderr, rerun
    assert finish_cli(reference).returncode == 0
    assert output.read_bytes() == (tmp_path / "reference.parquet").read_bytes()
    assert pd.read_parquet(output)["id"].tolist() == [str(i) for i in range(3000)]
