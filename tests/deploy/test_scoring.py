"""Scoring a table: files in and out in every format, all columns kept, in order, chunk by chunk."""

import json
import math

import pandas as pd
import pytest
from helpers import write_random_checkpoint

from gpt_classifier.data.table_chunks import read_table_chunks
from gpt_classifier.deploy import scoring
from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.deploy.scoring import FileOptions, ScoringOptions, score_file, score_frame
from gpt_classifier.errors import GPTClassifierError

CLASSES = ["ham", "spam"]
TEXTS = [
    "Hey, dinner tonight?",
    'She said "call me", then left',  # quotes and a comma
    "Line one\nline two\r\nand, a third",  # a multi-line field
    "WINNER!! Claim your £1000 prize: text CLAIM to 80086",
    "tab\tinside",
    "ok",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("scoring") / "model.ckpt", CLASSES)


@pytest.fixture(scope="module")
def predictor(model_path):
    return load_predictor(model_path)


def corpus(rows: int) -> pd.DataFrame:
    """`rows` rows: an id, a text (some multi-line), and a column that must come through untouched."""
    texts = [f"{i}: {TEXTS[i % len(TEXTS)]}" for i in range(rows)]
    return pd.DataFrame(
        {"id": [str(i) for i in range(rows)], "text": texts, "note": ["n" + str(i) for i in range(rows)]}
    )


def write_table(frame: pd.DataFrame, path):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def read_output(path) -> pd.DataFrame:
    if path.suffix in (".csv", ".tsv"):
        sep = "," if path.suffix == ".csv" else "\t"
        return pd.read_csv(path, sep=sep, dtype={"id": str}, keep_default_na=False, na_values=[""])
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype={"id": str})
    return pd.read_parquet(path)


def assert_scored(scored: pd.DataFrame, source: pd.DataFrame, predictor) -> None:
    """Every input column and row, in order, with the predictions of the texts one would get directly."""
    expected_columns = ["id", "text", "note", "label", "probability", "probability_ham", "probability_spam"]
    assert list(scored.columns) == expected_columns
    assert scored["id"].astype(str).tolist() == source["id"].tolist()
    assert scored["text"].tolist() == source["text"].tolist()
    assert scored["note"].tolist() == source["note"].tolist()
    direct = predictor.predict(source["text"].tolist())
    assert scored["label"].tolist() == [p.label for p in direct]
    for row, prediction in zip(scored.itertuples(), direct, strict=True):
        assert math.isclose(row.probability, prediction.probability, abs_tol=1e-5)
        assert math.isclose(row.probability_spam, prediction.probabilities["spam"], abs_tol=1e-5)
        assert math.isclose(row.probability_ham + row.probability_spam, 1, abs_tol=1e-5)


@pytest.mark.parametrize("source_suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
@pytest.mark.parametrize("output_suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_in_and_out_keeps_columns_rows_and_order(
    model_path, predictor, tmp_path, source_suffix, output_suffix
):
    source = corpus(23)
    path = write_table(source, tmp_path / f"in{source_suffix}")
    output = tmp_path / f"out{output_suffix}"
    summary = score_file(model_path, path, output, ScoringOptions(), FileOptions(chunk_rows=5))
    assert summary.texts == 23 and summary.bad_rows == 0 and sum(summary.labels.values()) == 23
    assert_scored(read_output(output), source, predictor)
    assert not (tmp_path / f"out{output_suffix}.parts").exists()


def test_multi_line_csv_fields_come_back_whole(model_path, tmp_path):
    path = write_table(corpus(12), tmp_path / "in.csv")
    output = tmp_path / "out.csv"
    score_file(model_path, path, output, ScoringOptions(), FileOptions(chunk_rows=4))
    texts = pd.read_csv(output, dtype=str)["text"].tolist()
    assert texts[2] == "2: Line one\nline two\r\nand, a third"
    assert texts[1] == '1: She said "call me", then left'


def test_chunks_hold_at_most_chunk_rows(model_path, tmp_path, monkeypatch):
    """Memory is bounded by the chunk: the model never sees more than `chunk_rows` texts at once, and
    the reader never holds more, whatever the file's size."""
    path = write_table(corpus(1000), tmp_path / "in.csv")
    assert [len(chunk.rows) for chunk in read_table_chunks(path, 64)] == [64] * 15 + [40]
    seen = []
    real_score_frame = scoring.score_frame

    def counting(predictor, frame, options):
        seen.append(len(frame))
        return real_score_frame(predictor, frame, options)

    monkeypatch.setattr(scoring, "score_frame", counting)
    score_file(model_path, path, tmp_path / "out.jsonl", ScoringOptions(), FileOptions(chunk_rows=100))
    assert max(seen) == 100 and sum(seen) == 1000


def test_within_a_chunk_texts_are_written_back_in_input_order(model_path, predictor, tmp_path):
    """Texts of very different lengths in one chunk: sorted for the batches, written back in order."""
    texts = ["x " * n for n in (30, 1, 12, 2, 25, 3, 8)]
    source = pd.DataFrame({"id": [str(i) for i in range(7)], "text": texts, "note": ["-"] * 7})
    path = write_table(source, tmp_path / "in.jsonl")
    score_file(
        model_path, path, tmp_path / "out.csv", ScoringOptions(batch_size=2), FileOptions(chunk_rows=7)
    )
    assert_scored(read_output(tmp_path / "out.csv"), source, predictor)


def test_score_frame_keeps_index_and_marks_rows_without_text(predictor):
    frame = pd.DataFrame(
        {"text": ["hello", "", None, "  ", "bye"], "n": range(5)}, index=[10, 11, 12, 13, 14]
    )
    scored = score_frame(predictor, frame, ScoringOptions())
    assert scored.index.tolist() == [10, 11, 12, 13, 14]
    assert scored["error"].fillna("").tolist() == ["", "empty text", "empty text", "empty text", ""]
    assert scored["label"].notna().tolist() == [True, False, False, False, True]
    assert math.isnan(scored.loc[11, "probability"])


@pytest.mark.parametrize(
    ("options", "frame", "message"),
    [
        (ScoringOptions(text_column="body"), {"text": ["a"]}, "no text column 'body' (columns: text)"),
        (ScoringOptions(), {"text": ["a"], "label": ["spam"]}, "already has column 'label'"),
        (ScoringOptions(threshold=0.5), None, "--threshold is for two classes; this model has 3"),
    ],
)
def test_score_frame_errors(predictor, tmp_path, options, frame, message):
    if frame is None:  # a three-class model
        predictor = load_predictor(write_random_checkpoint(tmp_path / "three.ckpt", ["a", "b", "c"]))
        frame = {"text": ["a"]}
    with pytest.raises(GPTClassifierError, match=message.replace("(", r"\(").replace(")", r"\)")):
        score_frame(predictor, pd.DataFrame(frame), options)


def test_column_prefix_avoids_a_clash(predictor):
    frame = pd.DataFrame({"text": ["a"], "label": ["spam"]})
    scored = score_frame(predictor, frame, ScoringOptions(column_prefix="predicted_"))
    assert scored["label"].tolist() == ["spam"]
    assert {"predicted_label", "predicted_probability_spam", "predicted_error"} <= set(scored.columns)


def test_summary_counts_labels(model_path, tmp_path):
    path = write_table(corpus(10), tmp_path / "in.csv")
    summary = score_file(model_path, path, tmp_path / "out.csv", ScoringOptions(threshold=0.0))
    assert summary.labels == {"spam": 10}
    line = summary.line(tmp_path / "out.csv", "skip")
    assert line.startswith("scored 10 texts in ") and "spam 10; wrote " in line
    assert json.loads(json.dumps(dict(summary.labels))) == {"spam": 10}


def test_the_file_is_read_one_chunk_ahead_of_scoring_at_most(model_path, tmp_path, monkeypatch):
    """Memory flat as the file grows: a chunk is read only when the one before it is scored and
    saved, never the whole file first (pandas' Arrow-backed strings escape tracemalloc, so this
    checks the order of reads and scores instead)."""
    path = write_table(corpus(1000), tmp_path / "in.csv")
    events = []
    real_reader, real_score_frame = scoring.read_table_chunks, scoring.score_frame

    def reading(*args, **kwargs):
        for chunk in real_reader(*args, **kwargs):
            events.append("read")
            yield chunk

    def scoring_frame(predictor, frame, options):
        if len(frame):
            events.append("score")
        return real_score_frame(predictor, frame, options)

    monkeypatch.setattr(scoring, "read_table_chunks", reading)
    monkeypatch.setattr(scoring, "score_frame", scoring_frame)
    score_file(model_path, path, tmp_path / "out.csv", ScoringOptions(), FileOptions(chunk_rows=100))
    assert events == ["read", "score"] * 10


def test_onnx_model_scores_as_the_checkpoint(model_path, predictor, tmp_path):
    from gpt_classifier.deploy.onnx_export import export_onnx
    from gpt_classifier.model.checkpoint import load_classifier

    onnx = tmp_path / "model.onnx"
    export_onnx(load_classifier(model_path), onnx)
    source = corpus(15)
    path = write_table(source, tmp_path / "in.jsonl")
    score_file(onnx, path, tmp_path / "out.parquet", ScoringOptions(), FileOptions(chunk_rows=4))
    assert_scored(read_output(tmp_path / "out.parquet"), source, predictor)
