"""int8 exports that check themselves: agreement with fp32 and the accuracy change on the run's
validation split (or --check-file), a bar tested at its exact edges, one-line refusals, --force."""

import csv
import json
import random
import re

import onnx
import pytest
import torch
from helpers import ROOT, TINY_MODEL, run_many

from gpt_classifier.deploy.onnx_export import export_onnx, int8_candidates
from gpt_classifier.deploy.predictor import load_predictor, predict_texts
from gpt_classifier.deploy.quantization_check import CheckTexts, QuantizationGate, read_check_texts
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier

EXPORT_PY = ROOT / "export.py"
CLASSES = ["ham", "spam"]
WORDS = [
    "see",
    "you",
    "at",
    "lunch",
    "home",
    "bus",
    "call",
    "later",
    "work",
    "film",
    "game",
    "coffee",
    "prize",
    "win",
    "free",
    "cash",
]


@pytest.fixture(scope="module")
def borderline(tmp_path_factory):
    """A checkpoint whose head bias puts the median text on the decision boundary, so that int8's
    rounding flips a few labels; its validation split holds the fp32 labels (fp32 accuracy 100 %)."""
    folder = tmp_path_factory.mktemp("borderline")
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(2, 10))) for _ in range(200)]
    torch.manual_seed(0)
    data = {"max_length": 24, "padding": "dynamic", "data_dir": str(folder / "data")}
    module = GPTClassifier(TINY_MODEL, CLASSES, {"policy": "all"}, {"position": "flexible"}, data)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.2 * torch.randn_like(param))
        spam = torch.tensor([p.probabilities["spam"] for p in predict_texts(texts, module.classifier)])
        module.classifier.model.out_head.bias[1] -= (spam / (1 - spam)).log().median()
    checkpoint = folder / "model.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, checkpoint)
    fp32 = folder / "fp32.onnx"
    export_onnx(load_classifier(checkpoint), fp32)
    labels = [CLASSES.index(p.label) for p in load_predictor(fp32).predict(texts)]
    (folder / "data").mkdir()
    with open(folder / "data" / "validation.csv", "w", newline="") as f:
        csv.writer(f).writerows([("Text", "Label"), *zip(texts, labels, strict=True)])
    candidates = list(int8_candidates(fp32, folder))  # quantized once for every bar below
    return {
        "checkpoint": checkpoint,
        "fp32": fp32,
        "candidates": candidates,
        "check": CheckTexts(texts, labels, "the texts"),
    }


def measure(borderline, **bar):
    gate = QuantizationGate(borderline["check"], **bar)
    return gate.choose(borderline["fp32"], borderline["candidates"])


def test_the_bar_at_its_exact_edges(borderline):
    _, result = measure(borderline, force=True, min_agreement=1.0)
    n, agreeing = result.texts, result.agreeing
    assert n == 200 and 150 < agreeing < n  # some labels flip: the gate has something to refuse
    assert result.fp32_accuracy == 1.0 and result.int8_accuracy == agreeing / n
    assert result.accuracy_drop == pytest.approx(100 * (n - agreeing) / n)
    _, passed = measure(borderline, min_agreement=agreeing / n, max_accuracy_drop=100.0)
    assert passed.agreement == agreeing / n
    with pytest.raises(GPTClassifierError, match=re.escape(f"({agreeing}/{n})")):
        measure(borderline, min_agreement=(agreeing + 1) / n, max_accuracy_drop=100.0)
    _, passed = measure(borderline, min_agreement=0.0, max_accuracy_drop=result.accuracy_drop)
    with pytest.raises(GPTClassifierError, match=r"accuracy 100\.00% -> .* points\); the bar is"):
        measure(borderline, min_agreement=0.0, max_accuracy_drop=result.accuracy_drop - 1e-9)


def test_bad_bars_and_check_files_are_one_line_errors(tmp_path):
    with pytest.raises(GPTClassifierError, match=re.escape("--min-agreement 99.0 must be in [0, 1]")):
        QuantizationGate(None, min_agreement=99.0)
    with pytest.raises(GPTClassifierError, match=re.escape("--max-accuracy-drop -1.0 must be >= 0")):
        QuantizationGate(None, max_accuracy_drop=-1.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,eggs\n")
    with pytest.raises(GPTClassifierError, match=r"labels \['eggs'\] are not classes: use ham, spam or 0-1"):
        read_check_texts(bad, CLASSES, source="--check-file")
    named = tmp_path / "named.csv"
    named.write_text("Text,Label\nhello,spam\nhi,0\n")
    assert read_check_texts(named, CLASSES, source="--check-file").labels == [1, 0]


def test_export_cli_checks_int8_and_refuses_below_the_bar(borderline, tmp_path):
    checkpoint = str(borderline["checkpoint"])
    (tmp_path / "kept.onnx").write_bytes(b"an earlier export")
    unlabelled = tmp_path / "texts.csv"
    unlabelled.write_text("text\n" + "\n".join(borderline["check"].texts) + "\n")
    base = [checkpoint, "--format", "onnx", "--quantize", "int8"]
    jobs = {
        "refused": [*base, "--out", str(tmp_path / "kept.onnx"), "--min-agreement", "0.999"],
        "forced": [
            *base,
            *("--out", str(tmp_path / "forced.onnx"), "--check-file", str(unlabelled)),
            *("--min-agreement", "0.999", "--force"),
        ],
        "missing": [*base, "--out", str(tmp_path / "m.onnx"), "--check-file", str(tmp_path / "none.csv")],
        "fp32_force": [checkpoint, "--format", "onnx", "--out", str(tmp_path / "x.onnx"), "--force"],
    }
    results = run_many({name: (EXPORT_PY, args, tmp_path) for name, args in jobs.items()}, timeout=400)
    refused = results["refused"]  # on the run's validation split, with labels
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused
    assert "int8 refused on the validation split" in lines[0] and "label agreement" in lines[0]
    assert "accuracy 100.00% ->" in lines[0]
    assert (tmp_path / "kept.onnx").read_bytes() == b"an earlier export"  # nothing overwritten
    forced = results["forced"]  # on --check-file texts without labels: agreement only
    assert forced.returncode == 0 and "checked on --check-file" in forced.stderr, forced
    meta = {p.key: p.value for p in onnx.load(tmp_path / "forced.onnx").metadata_props}
    check = json.loads(meta["quantization_check"])
    assert check["texts"] == 200 and check["agreement"] < 0.999 and check["fp32_accuracy"] is None
    assert json.loads(meta["quantization"]) == check["method"]
    card = (tmp_path / "forced.card.md").read_text()  # the model card beside it says so too
    assert f"The weights are int8; {check['method']}: label agreement" in card
    for name, message in (("missing", "none.csv not found"), ("fp32_force", "apply to --quantize int8 only")):
        result = results[name]
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result
