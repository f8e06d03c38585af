"""The cost of an explanation: `explain_texts` (occlusion, one forward pass per token batched with the
text's other occlusions) against `predict_texts` on the same texts, side by side in one process.

    OMP_NUM_THREADS=1 python bench/explain_speed.py CKPT --texts 50      # the SMS test split's first 50

Prints the seconds per text of each and their ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from gpt_classifier.deploy.explain import explain_texts
from gpt_classifier.deploy.predictor import load_predictor, predict_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .ckpt or .onnx")
    parser.add_argument("--split", type=Path, default=Path("data/sms_spam/test.csv"), help="a split CSV")
    parser.add_argument("--texts", type=int, default=50, help="how many of its texts")
    args = parser.parse_args()
    texts = pd.read_csv(args.split)["Text"].astype(str).tolist()[: args.texts]
    classifier = load_predictor(args.model, "cpu").classifier
    predict_texts(texts[:2], classifier)  # warm up
    started = time.perf_counter()
    predict_texts(texts, classifier, batch_size=1)
    predict_seconds = (time.perf_counter() - started) / len(texts)
    started = time.perf_counter()
    explained = explain_texts(texts, classifier)
    explain_seconds = (time.perf_counter() - started) / len(texts)
    tokens = sum(len(e.tokens) for e in explained) / len(texts)
    print(
        f"{len(texts)} texts, {tokens:.1f} tokens each on average: "
        f"predict {1000 * predict_seconds:.1f} ms/text "
        f"(batch 1), explain {1000 * explain_seconds:.1f} ms/text, {explain_seconds / predict_seconds:.1f}x"
    )


if __name__ == "__main__":
    main()
