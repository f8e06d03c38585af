"""Checkpoints written before the package was reorganized load with today's code and predict the same.

The old code is checked out of git history (`git archive`) and trains a tiny model in a subprocess
with that tree on PYTHONPATH; its own prediction is the reference.
"""

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO

import pytest
import torch
from helpers import ROOT, cli_env

from gpt_classifier.deploy.predictor import load_predictor, predict_texts
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier, read_checkpoint

# The last commit before the reorganization into model/ data/ training/ deploy/ cli/.
OLD_COMMIT = "70ec754bad9e69ccad94691276920d46028ca923"
TEXTS = [
    "WINNER!! You have been selected to receive a £900 prize reward! Call 09061701461 now.",
    "Are we still meeting for lunch tomorrow?",
    "ok",
]
OLD_PREDICT = """
import json, sys
import gpt_classifier
from gpt_classifier.predict import load_predictor
assert gpt_classifier.__file__.startswith(sys.argv[1]), gpt_classifier.__file__
predictions = load_predictor(sys.argv[2]).predict(json.loads(sys.argv[3]))
print(json.dumps([p.probabilities for p in predictions]))
"""


def old_tree(destination):
    """The old commit's code and config in `destination`, or skip when history is not at hand."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{OLD_COMMIT}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        pytest.skip(f"git history with {OLD_COMMIT[:7]} is not available (a shallow or exported tree)")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", OLD_COMMIT, "train.py", "conf", "src"],
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return destination


def run_old(tree, args, timeout=300):
    env = {**cli_env(), "PYTHONPATH": str(tree / "src")}
    result = subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    """`last.ckpt` of a tiny run of the old code, and its probabilities for `TEXTS` by the old code."""
    tree = old_tree(tmp_path_factory.mktemp("old_code"))
    run_dir = tree / "run"
    run_old(
        tree,
        [
            "train.py",
            "model=gpt2-tiny",
            "model.weights=random",
            "trainer=cpu",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=4",
            "+trainer.limit_val_batches=2",
            "test=false",
            "logger=none",
            "callbacks.progress_bar.refresh_rate=0",
            "+data.urls=[]",
            f"data.data_dir={tree / 'data'}",
            f"data.cache_dir={tree / 'cache'}",
            f"hydra.run.dir={run_dir}",
        ],
    )
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    probabilities = json.loads(
        run_old(tree, ["-c", OLD_PREDICT, str(tree), str(checkpoint), json.dumps(TEXTS)]).splitlines()[-1]
    )
    return checkpoint, probabilities


def assert_same_probabilities(predictions, expected):
    assert len(predictions) == len(expected)
    for prediction, old in zip(predictions, expected, strict=True):
        assert prediction.probabilities.keys() == old.keys()
        for name, value in old.items():
            assert prediction.probabilities[name] == pytest.approx(value, abs=1e-6, rel=0)


def test_old_checkpoint_has_todays_state_dict_keys(old_checkpoint):
    checkpoint, _ = old_checkpoint
    keys = set(read_checkpoint(checkpoint)["state_dict"])
    expected = {f"classifier.{key}" for key in load_classifier(checkpoint).state_dict()}
    assert keys == expected
    assert "classifier.model.trf_blocks.1.att.W_query.weight" in keys


def test_old_checkpoint_predicts_as_the_old_code_did(old_checkpoint):
    checkpoint, expected = old_checkpoint
    assert_same_probabilities(predict_texts(TEXTS, load_classifier(checkpoint)), expected)
    assert_same_probabilities(load_predictor(checkpoint).predict(TEXTS), expected)


def test_checkpoint_of_another_model_layout_fails_in_one_line(old_checkpoint, tmp_path):
    checkpoint, _ = old_checkpoint
    content = read_checkpoint(checkpoint)
    content["state_dict"] = {
        key.replace(".att.", ".attention."): value for key, value in content["state_dict"].items()
    }
    renamed = tmp_path / "renamed.ckpt"
    torch.save(dict(content), renamed)
    with pytest.raises(GPTClassifierError, match="does not fit this version's model") as caught:
        load_classifier(renamed)
    assert "\n" not in str(caught.value) and os.fspath(renamed) in str(caught.value)
