"""Long documents, side by side in one run: `data.long_texts=truncate`, `head_tail` and `windows`.

The corpus is built here, e-mail-shaped: texts of 40 to 1,000 words (median about 230) of common
English words, labelled `billing` or `other` by three cue words of their class (invoice, refund,
payment... or meeting, lunch, project...) scattered over the text, with one cue of the other class
as noise in a third of them. In half of the texts every cue lies past the first `--max-length`
tokens: only a reader that goes past the first window can see them. The tiny model (random
weights, every layer trained: with a random frozen trunk it learns nothing in a few epochs) is
trained with each mode on the same split, 64 tokens a sequence, windows every 32 tokens (at most 16).
The table gives test accuracy, on all texts and split by where the cues are, windows and tokens
read per text (train split), the training time, and the time `predict_texts` takes over the test
split.

    OMP_NUM_THREADS=1 python bench/long_texts.py            # ~1 minute on 2 busy cores
    python bench/long_texts.py --train 300 --epochs 2       # quicker
    python bench/long_texts.py --out bench/results_long_texts.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import pandas as pd
import torch

from gpt_classifier.data.datamodule import TextClassificationDataModule
from gpt_classifier.deploy.predictor import predict_texts
from gpt_classifier.training.lightning_module import GPTClassifier

FILLER_TEXT = """the of and to a in is it you that he was for on are with as at one have this from or had
by but what some we can out other were all there when up use your how said an each she which do their
time if will way about many then them would like so these her make see him two has more day could go
come did no most people my over"""
FILLER = FILLER_TEXT.split()
CUES = {
    "billing": ["invoice", "refund", "payment", "charge", "receipt", "billing", "overdue", "card"],
    "other": ["meeting", "lunch", "weekend", "project", "holiday", "slides", "agenda", "football"],
}
TINY = {
    "name": "gpt2-tiny",
    "weights": "random",
    "vocab_size": 50257,
    "context_length": 256,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
    "causal": True,
}


def email(rng: random.Random, label: str, late: bool, first_window: int) -> str:
    """One text: filler words, three cues of `label` (all past `first_window` words when `late`)."""
    words = [rng.choice(FILLER) for _ in range(min(max(int(rng.lognormvariate(5.4, 0.6)), 40), 1000))]
    if late and len(words) <= first_window + 3:
        words += [rng.choice(FILLER) for _ in range(first_window + 20 - len(words))]
    start = first_window if late else 0
    other = "other" if label == "billing" else "billing"
    cues = rng.sample(CUES[label], 3) + ([rng.choice(CUES[other])] if rng.random() < 1 / 3 else [])
    for cue in cues:
        words[rng.randrange(start, len(words))] = cue
    return " ".join(words)


def write_corpus(folder: Path, sizes: dict[str, int], first_window: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for split, count in sizes.items():
        rows = []
        for i in range(count):
            label, late = ("billing", "other")[i % 2], (i // 2) % 2 == 1
            rows.append({"Text": email(rng, label, late, first_window), "Label": i % 2, "late": late})
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)


def run_mode(folder: Path, mode: str, args: argparse.Namespace) -> dict:
    """Train the tiny model reading texts as `mode`; its accuracies and times."""
    L.seed_everything(0)
    extra = (
        {"window_stride": args.max_length // 2, "max_windows": args.max_windows} if mode == "windows" else {}
    )
    dm = TextClassificationDataModule(
        folder, ["billing", "other"], max_length=args.max_length, long_texts=mode, eval_batch_size=64, **extra
    )
    dm.setup()
    module = GPTClassifier(
        TINY,
        dm.class_names,
        finetune={"policy": args.finetune},
        classifier={"pooling": args.pooling},
        data=dm.data_settings(),
        optimizer=partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.1),
    )
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=args.epochs, enable_model_summary=False, **options
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_seconds = time.perf_counter() - started
    test = pd.read_csv(folder / "test.csv")
    started = time.perf_counter()
    predictions = predict_texts(test["Text"].tolist(), module.classifier.eval())
    predict_seconds = time.perf_counter() - started
    correct = pd.Series(
        [p.label == dm.class_names[y] for p, y in zip(predictions, test["Label"], strict=True)]
    )
    dataset = dm.datasets["train"]
    windows = dataset.window_counts.mean() if hasattr(dataset, "window_counts") else 1.0
    return {
        "mode": mode,
        "test_acc": float(correct.mean()),
        "late_acc": float(correct[test["late"]].mean()),
        "early_acc": float(correct[~test["late"]].mean()),
        "fit_seconds": round(fit_seconds, 1),
        "tokens_per_text": round(float(dm.token_ids("train").lengths.sum()) / len(dataset), 1),
        "windows_per_text": round(float(windows), 2),
        "predict_seconds": round(predict_seconds, 2),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| data.long_texts | test acc | cues past window 1 | cues anywhere | windows/text | tokens/text "
        "| fit (s) | predict test (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {100 * r['test_acc']:.1f} % | {100 * r['late_acc']:.1f} % | "
            f"{100 * r['early_acc']:.1f} % | {r['windows_per_text']} | {r['tokens_per_text']} | "
            f"{r['fit_seconds']} | {r['predict_seconds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train", type=int, default=600, help="training texts (validation: a sixth, test: half)"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per sequence (a window)")
    parser.add_argument("--max-windows", type=int, default=16)
    parser.add_argument("--finetune", default="all", help="the finetune policy (conf/finetune)")
    parser.add_argument("--pooling", default="token", choices=("token", "mean"), help="classifier.pooling")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    sizes = {"train": args.train, "validation": args.train // 6, "test": args.train // 2}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_corpus(folder, sizes, first_window=args.max_length)
        results = [run_mode(folder, mode, args) for mode in ("truncate", "head_tail", "windows")]
    print(table(results))
    if args.out:
        args.out.write_text(
            json.dumps({"settings": vars(args) | {"out": str(args.out)}, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
