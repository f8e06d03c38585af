"""Classifying new texts: `classify_review`, batched `predict_texts`, the `predict.py` command line
(.ckpt and .onnx), broken checkpoints and inputs."""

import io
import json
import math
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from helpers import (
    PREDICT_PY,
    TINY_MODEL,
    CliResult,
    adamw,
    cli_env,
    quiet_trainer,
    run_many,
    write_random_checkpoint,
)

from gpt_classifier.cli.predict import main as predict_main
from gpt_classifier.cli.predict import read_texts
from gpt_classifier.data.sms import SpamDataModule
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import classify_review, load_predictor, predict_texts
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier, write_decision
from gpt_classifier.training.lightning_module import GPTClassifier

CLASSES = {"not spam", "spam"}
SPAM = "You are a winner you have been specially selected to receive $1000 cash or a $2000 award."
HAM = "Hey, just wanted to check if we're still on for dinner tonight? Let me know!"
MODELS = {
    # name: (data padding, classifier, finetune)
    "book": ("max_length", {"position": "last"}, {"policy": "last_block"}),
    "flexible": ("dynamic", {"position": "flexible"}, {"policy": "all"}),
}


def train_model(split_dir, padding, classifier, finetune):
    """One epoch of the tiny model; returns its `TextClassifier` with its test accuracy as Lightning
    measured it, and the trainer."""
    dm = SpamDataModule(data_dir=split_dir, urls=[], padding=padding, batch_size=16)
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    module = GPTClassifier(
        TINY_MODEL,
        dm.class_names,
        finetune=finetune,
        classifier=classifier,
        data={"max_length": dm.max_length, "padding": dm.padding},
        optimizer=adamw(2e-3),
    )
    trainer = quiet_trainer(limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    return module.classifier.eval(), float(trainer.callback_metrics["final/test_acc"]), trainer


@pytest.fixture(scope="module")
def trained(sms_split_dir, tmp_path_factory):
    """The two tiny models of MODELS, trained once, each with its checkpoint file."""
    folder = tmp_path_factory.mktemp("predict_models")
    models = {}
    for name, (padding, classifier, finetune) in MODELS.items():
        model, test_acc, trainer = train_model(sms_split_dir, padding, classifier, finetune)
        path = folder / f"{name}.ckpt"
        trainer.save_checkpoint(path)
        models[name] = (model, test_acc, path)
    return models


@pytest.fixture(scope="module")
def sms_test_split(sms_split_dir):
    return pd.read_csv(sms_split_dir / "test.csv")


def test_classify_review_returns_a_class_name(trained):
    model, _, _ = trained["book"]
    labels = {classify_review(text, model, get_tokenizer(), "cpu") for text in (SPAM, HAM, "", "ok")}
    assert labels <= CLASSES


@pytest.mark.parametrize("name", list(MODELS))
def test_predictions_on_the_test_split_match_the_evaluation(trained, sms_test_split, name):
    """Predicting the test texts gives the accuracy Lightning measured: same tokens, padding, reading."""
    model, test_acc, _ = trained[name]
    predictions = predict_texts(sms_test_split["Text"].astype(str).tolist(), model, get_tokenizer(), "cpu")
    labels = [model.class_names.index(p.label) for p in predictions]
    accuracy = sum(a == b for a, b in zip(labels, sms_test_split["Label"], strict=True)) / len(labels)
    assert accuracy == pytest.approx(test_acc, abs=1e-6)
    assert test_acc > 0.6  # it learned something: both classes occur among the predictions
    assert {p.label for p in predictions} == CLASSES
    assert all(0.5 <= p.probability <= 1 for p in predictions)


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_predictions_equal_one_at_a_time(trained, sms_test_split, name):
    model, _, _ = trained[name]
    long_text = " ".join(sms_test_split["Text"].astype(str).head(30))  # longer than max_length: truncated
    texts = [SPAM, HAM, "", long_text, *sms_test_split["Text"].astype(str).head(45)]
    tokenizer = get_tokenizer()
    batched = predict_texts(texts, model, tokenizer, "cpu", batch_size=16)
    single = [predict_texts([text], model, tokenizer, "cpu")[0] for text in texts]
    assert [p.text for p in batched] == texts  # in the order given, though batched by length
    assert [p.label for p in batched] == [p.label for p in single]
    assert [classify_review(t, model, tokenizer, "cpu") for t in texts[:4]] == [p.label for p in single[:4]]
    for b, s in zip(batched, single, strict=True):
        assert b.probability == pytest.approx(s.probability, abs=1e-5)


def test_unpadded_model_predicts_batched_as_one_at_a_time():
    torch.manual_seed(0)
    module = GPTClassifier(TINY_MODEL, sorted(CLASSES), data={"max_length": 120, "padding": "none"})
    model = module.classifier.eval()
    texts = ["ok", HAM, SPAM]
    tokenizer = get_tokenizer()
    batched = predict_texts(texts, model, tokenizer, "cpu")
    single = [predict_texts([text], model, tokenizer, "cpu")[0] for text in texts]
    assert [p.probability for p in batched] == pytest.approx([p.probability for p in single], abs=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_round_trip_predicts_the_same(trained, sms_test_split, name):
    model, _, path = trained[name]
    loaded = load_classifier(path)
    assert not loaded.training
    assert (loaded.class_names, loaded.max_length, loaded.padding) == (
        model.class_names,
        model.max_length,
        model.padding,
    )
    texts = sms_test_split["Text"].astype(str).head(40).tolist()
    tokenizer = get_tokenizer()
    before = predict_texts(texts, model, tokenizer, "cpu")
    after = predict_texts(texts, loaded, tokenizer, "cpu")
    assert [p.label for p in after] == [p.label for p in before]
    assert [p.probability for p in after] == pytest.approx([p.probability for p in before], abs=1e-6)


def edge_threshold(spam_probabilities: list[float]) -> float:
    """A threshold on which argmax and the thresholded decision disagree: the exact probability of the
    most spam-like text under 0.5 (spam only through `>=`), else the highest one (the texts between
    0.5 and it turn not spam)."""
    below = [p for p in spam_probabilities if p < 0.5]
    return max(below) if below else max(spam_probabilities)


def assert_decided_at(predictions, threshold: float) -> None:
    """Spam exactly when its probability is >= `threshold`, which differs from argmax here."""
    spam = [p.probabilities["spam"] for p in predictions]
    assert threshold in spam  # the edge itself is among the texts
    assert [p.label for p in predictions] == ["spam" if q >= threshold else "not spam" for q in spam]
    assert [p.label for p in predictions] != ["spam" if q >= 0.5 else "not spam" for q in spam]


@pytest.mark.parametrize("form", ["ckpt", "onnx"])
def test_the_stored_threshold_decides_at_its_exact_edge(trained, sms_test_split, tmp_path, form):
    """A threshold written into the checkpoint (and so into its ONNX export) is what prediction uses."""
    _, _, path = trained["book"]
    texts = sms_test_split["Text"].astype(str).head(40).tolist()

    def saved(name: str, decision: dict) -> str:
        ckpt = tmp_path / f"{name}.ckpt"
        shutil.copy(path, ckpt)
        write_decision(ckpt, decision)
        if form == "ckpt":
            return str(ckpt)
        export_onnx(load_classifier(ckpt), tmp_path / f"{name}.onnx")
        return str(tmp_path / f"{name}.onnx")

    plain = load_predictor(saved("argmax", {"threshold": None})).predict(texts)
    threshold = edge_threshold([p.probabilities["spam"] for p in plain])
    decided = load_predictor(saved("decided", {"positive_class": 1, "threshold": threshold})).predict(texts)
    assert [p.probabilities for p in decided] == [p.probabilities for p in plain]
    assert_decided_at(decided, threshold)


def test_cli_threshold_at_a_texts_exact_probability(trained, sms_test_split, tmp_path):
    """`--threshold P` with P a text's own probability: that text is spam (>=)."""
    texts = sms_test_split["Text"].astype(str).head(12).tolist()
    command = [sys.executable, str(PREDICT_PY), str(trained["book"][2]), "--json", *texts]

    def run(*extra: str) -> list:
        done = subprocess.run([*command, *extra], capture_output=True, text=True, env=cli_env(), timeout=300)
        assert done.returncode == 0, done.stderr
        return [SimpleNamespace(**json.loads(line)) for line in done.stdout.splitlines()]

    threshold = edge_threshold([p.probabilities["spam"] for p in run()])
    assert_decided_at(run("--threshold", repr(threshold)), threshold)


def test_truncated_checkpoint_is_a_clear_error(trained, tmp_path):
    _, _, path = trained["book"]
    cut = tmp_path / "cut.ckpt"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GPTClassifierError, match="is unreadable") as info:
        load_classifier(cut)
    assert "\n" not in str(info.value)


def test_foreign_and_missing_checkpoints_are_clear_errors(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(GPTClassifierError, match="has no model settings"):
        load_classifier(foreign)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(GPTClassifierError, match="is unreadable"):
        load_classifier(text)
    with pytest.raises(GPTClassifierError, match="not found"):
        load_classifier(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    ("texts", "file", "message"),
    [
        ([], None, "no texts given"),
        (["", "  "], None, "text 1 of 2 is empty: give it some words, or leave it out"),
        (["a", "  ", "b"], None, "text 2 of 3 is empty"),
        (["-", "a", "-"], None, "`-` (standard input) can be given once"),
        (["hello"], "{tmp}/texts.txt", "as arguments or --file, not both"),
        ([], "/missing/texts.txt", "--file /missing/texts.txt not found"),
        ([], "{tmp}", "is unreadable"),
        ([], "{tmp}/empty.txt", "has no text"),
        ([], "{tmp}/latin1.txt", "is not UTF-8 text (byte 0xe9 at offset 4)"),
    ],
)
def test_read_texts_errors(tmp_path, texts, file, message):
    (tmp_path / "texts.txt").write_text("hello\n")
    (tmp_path / "empty.txt").write_text("\n \n\n")
    (tmp_path / "latin1.txt").write_bytes("cafe\u00e9\n".encode("latin-1"))
    with pytest.raises(GPTClassifierError, match=re.escape(message)):
        read_texts(texts, file and file.format(tmp=tmp_path))


def test_read_texts_skips_and_counts_blank_lines(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes("\ufeffone, two!\r\n\r\n   \nthree\u2028still three\n\n".encode())
    assert read_texts([], str(path)) == (["one, two!", "three\u2028still three"], 3)
    path.write_text("no final newline\n\nlast")
    assert read_texts([], str(path)) == (["no final newline", "last"], 1)
    assert read_texts(["a", "b"], None) == (["a", "b"], 0)


def test_dash_reads_standard_input_as_one_text(monkeypatch):
    """The Unix convention: `-` is standard input, here one text (a multi-line e-mail, say)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Dear user,\nyou won!\r\n")))
    assert read_texts(["first", "-", "last"], None) == (["first", "Dear user,\nyou won!", "last"], 0)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n")))
    with pytest.raises(GPTClassifierError, match=re.escape("text 1 of 1 (`-`: standard input) is empty")):
        read_texts(["-"], None)


def test_threshold_with_more_than_two_classes_is_a_one_line_error(tmp_path, capsys):
    model = write_random_checkpoint(tmp_path / "three.ckpt", ["a", "b", "c"])
    assert predict_main([str(model), "--threshold", "0.5", "hello"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().count("\n") == 0
    assert "--threshold is for two classes; this model has 3 (a, b, c)" in err
    assert predict_main([str(model), "hello"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("a", "b", "c")


QUOTES = 'She said "call me" and I\'m like... ok'
ENDOFTEXT_TEXT = "a literal <|endoftext|> in a message"
ARG_TEXTS = [HAM, "You won a 1000 cash prize, call now!", QUOTES, ENDOFTEXT_TEXT]


@pytest.fixture(scope="module")
def cli(trained, tmp_path_factory):
    """The `predict.py` runs of this module, started together."""
    cwd = tmp_path_factory.mktemp("predict_cli")
    ckpt = trained["book"][2]
    onnx = cwd.parent / "book.onnx"  # outside cwd: the runs must write nothing there
    export_onnx(load_classifier(ckpt), onnx)
    texts_file = cwd / "messages.txt"
    texts_file.write_text(f"{SPAM}\n\n{HAM}\nok then, see you at 5\n", encoding="utf-8")
    (cwd / "latin1.txt").write_bytes(b"caf\xe9\n")
    (cwd / "notes.ckpt").write_text("not a checkpoint\n")
    (cwd / "panic.txt").write_text(" " * 999_999 + "x\nhi\n", encoding="utf-8")  # whole, tiktoken panics
    jobs = {
        "text": [str(ckpt), SPAM, "--device", "cpu"],
        "args": [str(ckpt), *ARG_TEXTS],
        "json": [str(ckpt), "--json", *ARG_TEXTS],
        "onnx": [str(onnx), *ARG_TEXTS],
        "texts_file": [str(ckpt), "--file", str(texts_file), "--batch-size", "2"],
        "threshold_0": [str(ckpt), "--threshold", "0", HAM, SPAM],
        "missing_ckpt": [str(cwd / "missing.ckpt"), "hello"],
        "unreadable_ckpt": [str(cwd / "notes.ckpt"), "hello"],
        "no_text": [str(ckpt)],
        "latin1": [str(ckpt), "--file", str(cwd / "latin1.txt")],
        "bad_threshold": [str(ckpt), "--threshold", "1.5", "hello"],
        "help": ["--help"],
        "panic_text": [str(ckpt), "--file", str(cwd / "panic.txt")],
    }
    results = run_many({name: (PREDICT_PY, args, cwd) for name, args in jobs.items()}, timeout=300)
    # stdin: the one form run_many cannot feed
    stdin = subprocess.run(
        [sys.executable, str(PREDICT_PY), str(ckpt), "--file", "-"],
        input=f"{HAM}\n\n{SPAM}\n",
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(),
        timeout=300,
    )
    results["stdin"] = CliResult(stdin.args, stdin.returncode, stdin.stdout, stdin.stderr)
    results["texts"] = [SPAM, HAM, "ok then, see you at 5"]
    results["cwd"] = cwd
    return results


def expected_lines(model, texts):
    return [
        f"{p.label}\t{p.probability:.4f}\t{p.text}"
        for p in predict_texts(texts, model, get_tokenizer(), "cpu")
    ]


def assert_predicted(result, model, texts):
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr, result
    lines = result.stdout.splitlines()
    assert len(lines) == len(texts), result
    expected = expected_lines(model, texts)
    for line, want in zip(lines, expected, strict=True):
        label, probability, text = line.split("\t")
        want_label, want_probability, want_text = want.split("\t")
        assert (label, text) == (want_label, want_text)
        assert label in CLASSES
        assert math.isclose(float(probability), float(want_probability), abs_tol=2e-4)


def test_cli_text(cli, trained):
    assert_predicted(cli["text"], trained["book"][0], [SPAM])


def test_cli_texts_as_typed(cli, trained):
    """Commas, '!', quotes and a literal <|endoftext|> reach the model as typed, in order."""
    assert_predicted(cli["args"], trained["book"][0], ARG_TEXTS)
    assert cli["args"].stderr == ""


def test_cli_json(cli, trained):
    rows = [json.loads(line) for line in cli["json"].stdout.splitlines()]
    expected = predict_texts(ARG_TEXTS, trained["book"][0])
    assert [row["text"] for row in rows] == ARG_TEXTS
    for row, want in zip(rows, expected, strict=True):
        assert set(row) == {"text", "label", "probability", "probabilities"}
        assert row["label"] == want.label
        assert row["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
        assert row["probability"] == pytest.approx(row["probabilities"][row["label"]])


def test_cli_onnx_model_predicts_as_the_checkpoint(cli, trained):
    assert_predicted(cli["onnx"], trained["book"][0], ARG_TEXTS)


def test_cli_texts_file(cli, trained):
    """One line per non-blank line of the file, in order; the blank one is counted on stderr."""
    assert_predicted(cli["texts_file"], trained["book"][0], cli["texts"])
    assert cli["texts_file"].stderr.strip() == "skipped 1 empty line"


def test_cli_stdin(cli, trained):
    assert_predicted(cli["stdin"], trained["book"][0], [HAM, SPAM])
    assert "skipped 1 empty line" in cli["stdin"].stderr


def test_cli_threshold_overrides_the_decision(cli):
    """Threshold 0: the positive class (spam) whatever its probability."""
    assert [line.split("\t")[0] for line in cli["threshold_0"].stdout.splitlines()] == ["spam", "spam"]


def test_cli_help_lists_every_option(cli):
    assert cli["help"].returncode == 0
    options = ("--file", "--json", "--batch-size", "--device", "--threshold", "--max-length", ".onnx")
    table_options = ("--input", "--output", "--text-column", "--no-header", "--encoding", "--chunk-rows")
    for option in (*options, *table_options, "--on-bad-row", "--column-prefix"):
        assert option in cli["help"].stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing_ckpt", "missing.ckpt not found"),
        ("unreadable_ckpt", "notes.ckpt is unreadable"),
        ("no_text", "no texts given"),
        ("latin1", "is not UTF-8 text"),
        ("bad_threshold", "invalid probability value: '1.5'"),
    ],
)
def test_cli_errors_are_one_line(cli, name, message):
    result = cli[name]
    output = result.stdout + result.stderr
    assert result.returncode == 2, result
    assert "Traceback" not in output, result
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result  # the error line and nothing else


def test_cli_writes_nothing_into_the_working_directory(cli):
    assert sorted(p.name for p in cli["cwd"].iterdir()) == [
        "latin1.txt",
        "messages.txt",
        "notes.ckpt",
        "panic.txt",
    ]


def test_truncated_checkpoint_copy_keeps_the_original(trained, tmp_path):
    _, _, path = trained["flexible"]
    copy = tmp_path / "copy.ckpt"
    shutil.copy(path, copy)
    with open(copy, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(GPTClassifierError, match="unreadable"):
        load_classifier(copy)
    assert load_classifier(path).reading.position == "flexible"


def test_prediction_imports_no_training_stack(trained):
    """What keeps `predict.py` fast: no Lightning, Hydra, matplotlib, Hub client or torch._dynamo (which
    the meta-device init of an embedding would import) on the way from a checkpoint to a prediction."""
    code = (
        "import sys, torch; from gpt_classifier.deploy.predictor import load_predictor; "
        f"load_predictor({str(trained['book'][2])!r}).predict(['hi']); "
        "assert torch.nn.init.normal_.__name__ == 'normal_'; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'hydra', 'matplotlib', "
        "'huggingface_hub', 'transformers', 'onnxruntime'}), 'torch._dynamo' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "False"]


def test_cli_classifies_a_text_that_made_the_tokenizer_panic(cli):
    """A million spaces and a letter: only what max_length keeps is tokenized, so no Rust panic."""
    result = cli["panic_text"]
    assert result.returncode == 0, result
    assert "Traceback" not in result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if line.strip()]) >= 2, result
