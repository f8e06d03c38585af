"""Serving speed: `serve.py` under 1, 8 and 32 concurrent clients against `predict_texts` in one process.

A random-weight classifier of the chosen width (default gpt2-small: 124M parameters; book settings:
padded to 120 tokens, the last token read) is saved as a checkpoint. The ceiling is `predict_texts`
on the SMS test texts in this process, batched like the server (`--max-batch-size`), timed before
and after the server's runs (the faster counts). Then `serve.py`
runs in its own process on 127.0.0.1 and, for each number of clients, that many threads send one
text per request (`{"text": ...}`, keep-alive connections) until `--requests` have been answered:
requests/s, p50 and p99 latency, errors, and the batches the server formed (from `GET /stats`).

    python bench/serve_speed.py                               # gpt2-small, 800 requests per level
    python bench/serve_speed.py --model gpt2-tiny --requests 400 --out results.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.data.sms import SpamDataModule
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.deploy.predictor import predict_texts
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier

ROOT = Path(__file__).resolve().parent.parent
TINY = {"emb_dim": 32, "n_heads": 2, "n_layers": 2, "context_length": 256}


def make_checkpoint(model: str, folder: Path, class_names: list[str], max_length: int) -> Path:
    """A random-weight classifier saved as a gpt-classifier checkpoint (settings and state dict)."""
    name = "gpt2-small" if model == "gpt2-tiny" else model
    settings = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    settings.update(weights="random", **(TINY if model == "gpt2-tiny" else {}))
    torch.manual_seed(0)
    module = GPTClassifier(settings, class_names, data={"max_length": max_length, "padding": "max_length"})
    path = folder / f"{model}.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def offline_seconds(checkpoint: Path, texts: list[str], batch_size: int) -> float:
    """Seconds `predict_texts` takes for `texts` in this process (after a warm-up batch): the faster of
    a run in the main thread and one in a worker thread, as the server runs it. (On a CPU shared
    with other work, torch's OpenMP pool can be several times slower in the main thread.)"""
    classifier, tokenizer = load_classifier(checkpoint), get_tokenizer()
    predict_texts(texts[:batch_size], classifier, tokenizer, batch_size=batch_size)
    times = []

    def timed() -> None:
        started = time.perf_counter()
        predict_texts(texts, classifier, tokenizer, batch_size=batch_size)
        times.append(time.perf_counter() - started)

    timed()
    worker = threading.Thread(target=timed)
    worker.start()
    worker.join()
    print(f"offline predict_texts, {len(texts)} texts: main thread {times[0]:.2f} s, worker {times[1]:.2f} s")
    return round(min(times), 2)


def start_server(checkpoint: Path, max_batch_size: int, max_wait_ms: float) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, str(ROOT / "serve.py"), str(checkpoint), "--port", "0", "--no-access-log"]
    command += ["--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r":(\d+)$", line.strip())
    if not match:
        proc.kill()
        raise SystemExit(f"serve.py did not start: {line!r}")
    return proc, int(match.group(1))


def get_json(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def load_test(port: int, texts: list[str], clients: int, requests: int) -> dict:
    """`clients` threads share `requests` one-text requests; latency per request, errors, batches."""
    latencies: list[float] = []
    errors: list[str] = []
    per_client = [list(range(c, requests, clients)) for c in range(clients)]

    def client(indices: list[int]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for i in indices:
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=json.dumps({"text": texts[i % len(texts)]}))
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    errors.append(f"{response.status}: {body[:200]!r}")
            except Exception as err:
                errors.append(repr(err))
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            latencies.append(time.perf_counter() - started)
        connection.close()

    before = get_json(port, "/stats")
    threads = [threading.Thread(target=client, args=(indices,)) for indices in per_client]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    after = get_json(port, "/stats")
    batches = after["batches"] - before["batches"]
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "clients": clients,
        "requests": requests,
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * quantiles[98], 1),
        "batches": batches,
        "mean_batch": round(requests / batches, 2),
    }


def markdown(results: dict) -> str:
    offline = results["offline"]["texts_per_s"]
    lines = [
        "| clients | requests | errors | requests/s | p50 latency | p99 latency | mean batch | of offline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["server"]:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.1f} | "
            f"{r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['mean_batch']:.1f} | "
            f"{r['requests_per_s'] / offline:.2f}x |"
        )
    texts, batch = results["offline"]["texts"], results["max_batch_size"]
    lines.append(f"| offline `predict_texts` | {texts} texts | | {offline:.1f} | | | {batch} | 1.00x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-small", help="gpt2-small, gpt2-medium, ... or gpt2-tiny")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--requests", type=int, default=800, help="requests per number of clients")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dm = SpamDataModule(data_dir=folder / "split", urls=[], cache_dir=folder / "cache")
        dm.prepare_data()
        texts = pd.read_csv(folder / "split" / "test.csv")["Text"].astype(str).tolist()
        checkpoint = make_checkpoint(args.model, folder, ["not spam", "spam"], max_length=120)

        sample = (texts * (args.requests // len(texts) + 1))[: args.requests]
        seconds = [offline_seconds(checkpoint, sample, args.max_batch_size)]
        proc, port = start_server(checkpoint, args.max_batch_size, args.max_wait_ms)
        try:
            load_test(port, texts, clients=4, requests=2 * args.max_batch_size)  # warm-up
            server = []
            for clients in (int(c) for c in args.clients.split(",")):
                server.append(load_test(port, texts, clients, args.requests))
                print(json.dumps(server[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        seconds.append(offline_seconds(checkpoint, sample, args.max_batch_size))
    best = min(seconds)  # the ceiling: the faster of the runs before and after the server's
    offline = {"texts": len(sample), "seconds": seconds, "texts_per_s": round(len(sample) / best, 2)}

    results = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),  # other work on this machine meanwhile
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "offline": offline,
        "server": server,
    }
    if args.out:
        write_json_atomic(results, args.out)
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
