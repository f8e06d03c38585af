"""`predict.py MODEL --input TABLE --output FILE`: bad rows by row number, one-line errors, outputs kept."""

import io
import sys

import pandas as pd
import pytest
from helpers import write_random_checkpoint

from gpt_classifier.cli import main as gpt_classifier
from gpt_classifier.cli.predict import main as predict
from gpt_classifier.deploy.scoring import FileOptions, ScoringOptions, score_file

# Rows as a spreadsheet counts them (header = row 1): the multi-line texts of rows 2 and 3 make the
# file's line numbers differ from them; row 4 has too many fields, row 5 an empty text.
BAD_CSV = 'id,text\n1,"two\nlines"\n2,"three\nmore\nlines"\n3,a,b\n4,\n5,fine\n'
BAD_JSONL = '{"id": 1, "text": "fine"}\n{"id": 2, "text": \n\n["not", "an object"]\n{"id": 4, "text": 7}\n'


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(write_random_checkpoint(tmp_path_factory.mktemp("cli") / "model.ckpt", ["ham", "spam"]))


def run(capsys, *argv):
    """`predict.py argv...` in this process: (exit status, stdout, stderr lines)."""
    status = predict(list(argv))
    out, err = capsys.readouterr()
    return status, out, [line for line in err.splitlines() if line.strip()]


def test_bad_rows_are_reported_by_row_number_and_skipped(model_path, tmp_path, capsys):
    (tmp_path / "in.csv").write_text(BAD_CSV)
    status, out, err = run(
        capsys, model_path, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv")
    )
    assert status == 0, err
    assert err[:2] == ["row 4: expected 2 fields, saw 3 (skipped)", "row 5: empty text (skipped)"]
    assert err[2].startswith("scored 3 texts in ") and err[2].endswith(
        f"2 bad rows skipped; wrote {tmp_path / 'o.csv'}"
    )
    assert len(err) == 3 and out == ""
    scored = pd.read_csv(tmp_path / "o.csv", dtype=str)
    assert scored["id"].tolist() == ["1", "2", "5"] and "error" not in scored.columns


def test_bad_rows_kept_with_an_error_column_in_place(model_path, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(BAD_JSONL)
    output = tmp_path / "o.jsonl"
    status, _, err = run(
        capsys,
        model_path,
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(output),
        "--on-bad-row",
        "keep",
    )
    assert status == 0, err
    assert [line.split(":")[0] for line in err[:3]] == ["row 2", "row 4", "row 5"]
    scored = pd.read_json(output, lines=True)
    assert scored["error"].fillna("").tolist() == [
        "",
        "invalid JSON (Expecting value at character 20)",
        "not a JSON object",
        "text is a int, not a string",
    ]
    assert scored["label"].notna().tolist() == [True, False, False, False]


def test_fail_on_a_bad_row_stops_and_keeps_the_old_output(model_path, tmp_path, capsys):
    (tmp_path / "in.csv").write_text(BAD_CSV)
    output = tmp_path / "o.csv"
    output.write_text("an earlier result\n")
    status, _, err = run(
        capsys,
        model_path,
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(output),
        "--on-bad-row",
        "fail",
    )
    assert status == 2
    assert err[-1].endswith(
        "error: row 4 of the input: expected 2 fields, saw 3: fix it, or pass --on-bad-row skip (or keep)"
    )
    assert output.read_text() == "an earlier result\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--input", "{tmp}/missing.csv", "--output", "{tmp}/o.csv"], "missing.csv not found"),
        (
            ["--input", "{tmp}/in.csv", "--output", "{tmp}/o.xlsx"],
            "unknown file type '.xlsx': use .csv, .tsv, .jsonl or .parquet",
        ),
        (["--input", "{tmp}/in.csv"], "--input TABLE and --output FILE go together"),
        (["--input", "{tmp}/in.csv", "--output", "{tmp}/in.csv"], "is the input: choose another file"),
        (
            ["--input", "{tmp}/in.csv", "--output", "{tmp}/o.csv", "--text-column", "body"],
            "no text column 'body' (columns: id, text): pass --text-column NAME",
        ),
        (
            ["--input", "{tmp}/in.csv", "--output", "{tmp}/o.csv", "--json"],
            "leave out TEXT, --file and --json",
        ),
        (
            ["--input", "{tmp}/in.csv", "--output", "{tmp}/o.csv", "--no-header"],
            "--no-header: pass --text-column as a column number",
        ),
        (["--input", "{tmp}/latin1.csv", "--output", "{tmp}/o.csv"], "is not utf-8 text (byte 0xe9"),
        (["--input", "{tmp}/empty.csv", "--output", "{tmp}/o.csv"], "has no data rows: nothing to score"),
        (
            ["--input", "{tmp}/in.csv", "--output", "{tmp}/o.csv", "--chunk-rows", "0"],
            "invalid positive integer value: '0'",
        ),
    ],
)
def test_table_errors_are_one_line(model_path, tmp_path, capsys, arguments, message):
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n")
    (tmp_path / "latin1.csv").write_bytes(b"id,text\n1,caf\xe9\n")
    (tmp_path / "empty.csv").write_text("id,text\n")
    argv = [model_path, *(a.format(tmp=tmp_path) for a in arguments)]
    try:
        status, out, err = run(capsys, *argv)
    except SystemExit as exit_:  # argparse's own usage errors
        status, (out, err) = exit_.code, capsys.readouterr()
        err = err.splitlines()
    assert status == 2 and out == ""
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.csv.parts").exists()


def test_other_encodings_and_headerless_files(model_path, tmp_path, capsys):
    (tmp_path / "in.tsv").write_bytes("1\tcafé au lait\n2\tthé\n".encode("latin-1"))
    output = tmp_path / "o.parquet"
    argv = ["--input", str(tmp_path / "in.tsv"), "--output", str(output), "--no-header", "--text-column", "1"]
    status, _, err = run(capsys, model_path, *argv, "--encoding", "latin-1")
    assert status == 0, err
    assert pd.read_parquet(output)["1"].tolist() == ["café au lait", "thé"]


def test_gpt_classifier_predict_scores_a_table(model_path, tmp_path, capsys):
    (tmp_path / "in.csv").write_text("text\nhello\n")
    assert (
        gpt_classifier.main(
            [
                "predict",
                model_path,
                "--input",
                str(tmp_path / "in.csv"),
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 0
    )
    assert pd.read_json(tmp_path / "o.jsonl", lines=True)["text"].tolist() == ["hello"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("on_terminal", [True, False])
def test_progress_bar_only_on_a_terminal(model_path, tmp_path, monkeypatch, capsys, on_terminal):
    """Texts done out of the (estimated) total, texts/s and the time left, on a terminal only."""
    (tmp_path / "in.csv").write_text("text\n" + "hello there\n" * 50)
    stderr = Terminal() if on_terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    options = FileOptions(chunk_rows=10)
    score_file(model_path, tmp_path / "in.csv", tmp_path / "o.csv", ScoringOptions(), options)
    bar = stderr.getvalue().replace("\r", "\n").splitlines()
    finished = [line for line in bar if "50/50" in line]
    assert bool(finished) == on_terminal, bar
    if on_terminal:
        assert "texts/s]" in finished[-1] and "100%|" in finished[-1] and "<00:00" in finished[-1]
