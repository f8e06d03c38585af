"""Prediction speed over the 300 SMS test messages, side by side in one run:

  book        the chapter's `classify_review`, one message at a time, padded to 120, every block at
              every position (`read_positions_only=False`: the book's `model(x)[:, -1, :]`)
  torch       `predict_texts`: batches of 64 similar lengths, only the read position's prefix computed
  onnx fp32   `export.py --format onnx`, run by ONNX Runtime through `load_predictor` (same batching)
  onnx int8   the same with `--quantize int8` (dynamic quantization)

The classifier is the book's (gpt2-small size, last block trainable, last token, padded to 120) with
random weights (no pretrained weights here; the weights do not change the cost), saved as a
checkpoint in train.py's layout. With `--reading flexible` the torch and ONNX paths use the same
weights trained the book's row-16 way instead (the last real token, each batch padded only to its
longest: what `export.py --format hf` needs), while `book` stays the chapter's. Agreement is the
share of test messages whose label equals fp32's (the same model's).

    python bench/predict_speed.py                 # ~2 minutes on 2 cores
    python bench/predict_speed.py --reading flexible
    python bench/predict_speed.py --model gpt2-tiny --out results.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gpt_classifier.data.sms import SpamDataModule
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import classify_review, load_predictor, predict_texts
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier

ROOT = Path(__file__).resolve().parent.parent


def book_checkpoint(folder: Path, model_name: str, max_length: int, *, reading: str = "book") -> Path:
    """The chapter's classifier with random weights, saved as train.py saves it; `reading="flexible"`:
    the same weights reading the last real token, trained with dynamic padding (the book's row 16)."""
    model = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{model_name}.yaml"))
    torch.manual_seed(123)
    module = GPTClassifier(
        {**model, "weights": "random"},
        ["not spam", "spam"],
        finetune={"policy": "last_block"},
        classifier={"position": "last" if reading == "book" else "flexible"},
        data={"max_length": max_length, "padding": "max_length" if reading == "book" else "dynamic"},
    )
    path = folder / f"{reading}.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def rate(run, texts: list[str]) -> tuple[list, float, float]:
    """Predictions of `run(texts)`, messages per wall second and per CPU second (this process's user +
    system time, which other load on a shared machine changes less), after a warm-up on a few texts."""
    run(texts[:4])
    wall, cpu = time.perf_counter(), time.process_time()
    predictions = run(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return predictions, len(texts) / wall, len(texts) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-small", help="model config name (conf/model)")
    parser.add_argument(
        "--reading", choices=("book", "flexible"), default="book", help="the torch and ONNX paths' model"
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = SpamDataModule(data_dir=folder / "sms", urls=[], cache_dir=folder / "cache")
        data.prepare_data()
        data.setup()
        texts = data.read_split("test")["Text"].astype(str).tolist()
        book_ckpt = book_checkpoint(folder, args.model, data.max_length)
        ckpt = book_checkpoint(folder, args.model, data.max_length, reading=args.reading)
        tokenizer = get_tokenizer()
        classifier = load_classifier(ckpt)
        book = load_classifier(book_ckpt)
        book.read_positions_only = False  # the book's full computation
        fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
        started = time.perf_counter()
        export_onnx(classifier, fp32)
        export_seconds = time.perf_counter() - started
        export_onnx(classifier, int8, quantize="int8")
        onnx = {name: load_predictor(path) for name, path in (("fp32", fp32), ("int8", int8))}

        runs = {
            "book": lambda t: [predict_texts([x], book, tokenizer)[0] for x in t],  # = classify_review
            "torch": lambda t: predict_texts(t, classifier, tokenizer),
            "onnx_fp32": lambda t: onnx["fp32"].predict(t),
            "onnx_int8": lambda t: onnx["int8"].predict(t),
        }
        predictions, rates, cpu_rates = {}, {}, {}
        for name, run in runs.items():
            predictions[name], rates[name], cpu_rates[name] = rate(run, texts)
            print(f"{name}: {rates[name]:.1f} messages/s, {cpu_rates[name]:.1f} per CPU second", flush=True)
        assert classify_review(texts[0], book, tokenizer, "cpu") == predictions["book"][0].label
        labels = {name: [p.label for p in preds] for name, preds in predictions.items()}
        results = {
            "model": args.model,
            "reading": args.reading,
            "messages": len(texts),
            "threads": torch.get_num_threads(),
            "msgs_per_s": rates,
            "msgs_per_cpu_s": cpu_rates,
            "ratio_to_book": {name: r / rates["book"] for name, r in rates.items()},
            "cpu_ratio_to_book": {name: r / cpu_rates["book"] for name, r in cpu_rates.items()},
            "agreement_with_fp32": {
                name: sum(a == b for a, b in zip(labels[name], labels["onnx_fp32"], strict=True)) / len(texts)
                for name in runs
            },
            "max_prob_diff": {
                name: max(
                    abs(a.probabilities[k] - b.probabilities[k])
                    for a, b in zip(predictions[name], predictions["torch"], strict=True)
                    for k in a.probabilities
                )
                for name in runs
            },
            "bytes": {"checkpoint": ckpt.stat().st_size, "onnx_fp32": fp32.stat().st_size},
            "onnx_export_seconds": export_seconds,
        }
        results["bytes"]["onnx_int8"] = int8.stat().st_size
    rows = [
        "| path | messages/s | vs the book | per CPU second | vs the book (CPU) | label agreement with fp32 "
        "| max prob. diff vs torch | file MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sizes = {"book": "checkpoint", "torch": "checkpoint", "onnx_fp32": "onnx_fp32", "onnx_int8": "onnx_int8"}
    for name in runs:
        agreement = 100 * results["agreement_with_fp32"][name]
        rows.append(
            f"| {name} | {rates[name]:.1f} | {results['ratio_to_book'][name]:.1f}x | {cpu_rates[name]:.1f} | "
            f"{results['cpu_ratio_to_book'][name]:.1f}x | {agreement:.1f}% | "
            f"{results['max_prob_diff'][name]:.1e} | {results['bytes'][sizes[name]] / 1e6:.0f} |"
        )
    print("\n".join(["", *rows]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
