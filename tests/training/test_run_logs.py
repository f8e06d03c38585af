"""A normal tiny run logs each line once, with no warning of ours, and TensorBoard has the book's
curves (loss and accuracy, train and validation) against examples seen."""

import collections
import re
import subprocess
import sys

import pytest
from helpers import TINY_OVERRIDES, TRAIN_PY, cli_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EPOCHS = 2
ROWS = 60  # a 70/10/20 split by class: 42 training texts, 5 batches of 8 (the partial one dropped)
EXAMPLES_PER_EPOCH = 40
# Hydra's console lines `[time][logger][LEVEL] - message` and Lightning's own `INFO: message`
LOG_LINE = re.compile(r"^(?:\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - |(?:INFO|WARNING): )(?P<message>.*)$")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_logs")
    texts = root / "texts.csv"
    lines = ["text,label"] + [
        f"message {i} {'win cash now' if i % 2 else 'see you at lunch'},{'spam' if i % 2 else 'ham'}"
        for i in range(ROWS)
    ]
    texts.write_text("\n".join(lines) + "\n")
    env = {key: value for key, value in cli_env().items() if key != "PYTHONWARNINGS"}  # warnings shown
    args = [
        *TINY_OVERRIDES,
        "trainer=cpu",
        f"trainer.max_epochs={EPOCHS}",
        "data=csv",
        f"data.path={texts}",
        f"hydra.run.dir={root / 'run'}",
    ]
    result = subprocess.run(
        [sys.executable, str(TRAIN_PY), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return root / "run", result


def test_each_log_line_is_printed_once(tiny_run):
    run_dir, result = tiny_run
    messages = [
        m["message"] for line in (result.stdout + result.stderr).splitlines() if (m := LOG_LINE.match(line))
    ]
    assert any("Trainer.fit` stopped" in m for m in messages)
    assert sum("2 classes (ham, spam)" in m for m in messages) == 1
    repeated = {m: n for m, n in collections.Counter(messages).items() if n > 1}
    assert not repeated, repeated
    logged = (run_dir / "train.log").read_text()
    assert logged.count("Trainer.fit` stopped") == 1 and logged.count("2 classes (ham, spam)") == 1


def test_no_warning_of_ours(tiny_run):
    _, result = tiny_run
    ours = [line for line in result.stderr.splitlines() if "gpt_classifier" in line or "Warning" in line]
    ours = [line for line in ours if "site-packages" not in line]  # the libraries' own deprecations
    assert not ours, "\n".join(ours)


def test_tensorboard_has_loss_and_accuracy_against_examples_seen(tiny_run):
    run_dir, _ = tiny_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    epoch_ends = [EXAMPLES_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
    for tag in ("train_acc", "val_acc", "val_loss"):
        assert [e.step for e in events.Scalars(f"by_examples_seen/{tag}")] == epoch_ends, tag
    train_acc = [e.value for e in events.Scalars("by_examples_seen/train_acc")]
    assert train_acc == pytest.approx([e.value for e in events.Scalars("train/acc_epoch")], abs=1e-6)
    assert all(0 <= value <= 1 for value in train_acc)
    steps = [e.step for e in events.Scalars("by_examples_seen/train_loss")]
    assert steps == list(range(8, EPOCHS * EXAMPLES_PER_EPOCH + 1, 8))
