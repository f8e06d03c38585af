"""A tiny classifier exported to `model.onnx`, and what the torch path predicts for it (`expected.json`):
the inputs of test_onnx_without_torch.py, made where torch is installed.

    python tests/scripts/make_tiny_onnx.py OUT_DIR

CI runs this in its main environment, then the tests in a virtual environment without torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers

from helpers import TINY_MODEL

from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import predict_texts
from gpt_classifier.model.classifier import build_classifier

TEXTS = [
    "Hey, are we still on for dinner tonight?",
    "WINNER!! Claim your £1000 prize now: call 09061701461.",
    "ok",
    "a literal <|endoftext|> stays text",
    " ".join(["A long message that runs past the length the model was trained with."] * 6),
]


def make_tiny_onnx(out_dir: Path) -> Path:
    """`out_dir/model.onnx` (random weights, perturbed) and `out_dir/expected.json` (torch's answers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    classifier = build_classifier(
        TINY_MODEL,
        ["not spam", "spam"],
        finetune={"policy": "all"},
        classifier={"position": "flexible"},
        data={"max_length": 24, "padding": "dynamic"},
    )
    with torch.no_grad():
        for param in classifier.parameters():
            param.add_(0.2 * torch.randn_like(param))
    classifier.eval()
    export_onnx(classifier, out_dir / "model.onnx")
    predictions = predict_texts(TEXTS, classifier)
    expected = {
        "texts": TEXTS,
        "labels": [p.label for p in predictions],
        "probabilities": [list(p.probabilities.values()) for p in predictions],
    }
    (out_dir / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1))
    return out_dir


if __name__ == "__main__":
    make_tiny_onnx(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}/model.onnx and expected.json")
