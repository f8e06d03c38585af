"""An ONNX export over protobuf's 2 GB, end to end: a random-weight GPT-2-shaped classifier just over
2 GB in fp32 (emb_dim 1280 as gpt2-large, 25 blocks: 556 M parameters) is exported with external data,
loaded as `predict.py` loads it (`load_predictor`) and its logits compared with the torch model's,
then served by `serve.py` and asked over HTTP. Prints the time, the disk and the peak memory as
one JSON line.

    OMP_NUM_THREADS=2 python bench/onnx_external_data.py --out /tmp/big   # needs ~5 GB disk, ~12 GB RAM

The run folder is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from gpt_classifier.data.encoding import pad_batch
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.model.classifier import build_classifier

MODEL = {
    "name": "gpt2-2gb",
    "weights": "random",
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 1280,
    "n_heads": 20,
    "n_layers": 25,
    "drop_rate": 0.0,
    "qkv_bias": True,
    "causal": True,
}
TEXTS = ["Hey, are we still on for dinner tonight?", "WINNER!! Claim your prize now: call 09061701461"]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def served_probabilities(model: Path, texts: list[str]) -> tuple[list[dict], float]:
    """`serve.py model --port 0` in a subprocess, one `POST /predict`: the answers and the start time."""
    serve = Path(__file__).resolve().parents[1] / "serve.py"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(serve), str(model), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        address = re.search(r"on (http://\S+)$", proc.stdout.readline().strip()).group(1)
        start_seconds = time.perf_counter() - started
        request = urllib.request.Request(
            f"{address}/predict", json.dumps({"texts": texts}).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())["predictions"], start_seconds
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for model.onnx and its data")
    parser.add_argument("--keep", action="store_true", help="keep the exported files")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = {"max_length": 64, "padding": "dynamic"}
    classifier = build_classifier(MODEL, ["ham", "spam"], {"policy": "all"}, {"position": "flexible"}, data)
    classifier.eval()
    parameters = sum(p.numel() for p in classifier.parameters())
    print(f"{parameters / 1e6:.0f} M parameters, {4 * parameters / 1e9:.2f} GB in fp32", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "model.onnx"
    started = time.perf_counter()
    sizes = export_onnx(classifier, out)
    export_seconds = time.perf_counter() - started
    data_file = out.with_name(out.name + ".data")
    started = time.perf_counter()
    predictor = load_predictor(out)
    load_seconds = time.perf_counter() - started
    ids, lengths = pad_batch(get_tokenizer().encode_ordinary_batch(TEXTS), classifier.pad_token_id, None)
    with torch.no_grad():
        expected = classifier(ids, lengths)
    got = predictor.classifier(ids, lengths)
    difference = float((got - expected).abs().max())
    del predictor
    served, serve_start_seconds = served_probabilities(out, TEXTS)
    served_difference = max(
        abs(answer["probabilities"][name] - p)
        for answer, row in zip(served, expected.softmax(-1).tolist(), strict=True)
        for name, p in zip(classifier.class_names, row, strict=True)
    )
    result = {
        "parameters": parameters,
        "export_seconds": round(export_seconds, 1),
        "load_seconds": round(load_seconds, 1),
        "model_onnx_bytes": out.stat().st_size,
        "data_bytes": data_file.stat().st_size,
        "written_bytes": sizes["fp32_bytes"],
        "max_logit_difference": difference,
        "serve_start_seconds": round(serve_start_seconds, 1),
        "served_max_probability_difference": served_difference,
        "peak_rss_gb": round(peak_rss_gb(), 1),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    assert difference < 1e-4 and served_difference < 1e-4, (difference, served_difference)
    if not args.keep:
        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
