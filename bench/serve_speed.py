"""Serving speed: `serve.py` under 1, 8, 32 and 128 concurrent clients against `predict_texts` in one
process, for a `.ckpt` (torch) and its fp32 and int8 `.onnx` exports (ONNX Runtime); then an abuse mix.

A random-weight classifier of the chosen width (default gpt2-small: 124M parameters; book settings:
padded to 120 tokens, the last token read) is saved as a checkpoint. The ceiling is `predict_texts`
on the SMS test texts in this process, batched like the server (`--max-batch-size`), timed before
and after the server's runs (the faster counts). Then `serve.py`
runs in its own process on 127.0.0.1 and, for each number of clients, that many threads send one
text per request (`{"text": ...}`, keep-alive connections) until `--requests` have been answered:
requests/s, p50 and p99 latency, errors, and the batches the server formed (from `GET /stats`).

The abuse mix (`--abuse`, on the first format): 8 clients send small texts, quietly and then while
`--abusers` slow clients trickle their bodies a few bytes a second and as many others post 1 MB
texts (one 1 MB word, or a million spaces and a letter) in a loop. The small requests' p99 under
abuse is reported against their quiet p99.

    python bench/serve_speed.py                               # gpt2-small, 800 requests per level
    python bench/serve_speed.py --model gpt2-tiny --requests 400 --formats ckpt,onnx,int8 --abuse
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
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
JSON = {"Content-Type": "application/json"}


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


def model_files(checkpoint: Path, formats: list[str]) -> dict[str, Path]:
    """The checkpoint and its exports: `ckpt`, `onnx` (fp32) and `int8` (ONNX Runtime's dynamic int8)."""
    from gpt_classifier.deploy.onnx_export import export_onnx

    paths = {}
    for name in formats:
        if name == "ckpt":
            paths[name] = checkpoint
        else:
            paths[name] = checkpoint.with_name(f"{checkpoint.stem}-{name}.onnx")
            export_onnx(load_classifier(checkpoint), paths[name], quantize="int8" if name == "int8" else None)
    return paths


def start_server(checkpoint: Path, max_batch_size: int, max_wait_ms: float) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, str(ROOT / "serve.py"), str(checkpoint), "--port", "0", "--no-access-log"]
    command += ["--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms)]
    command += ["--max-body-bytes", "3000000", "--limit-concurrency", "1024"]
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
                body = json.dumps({"text": texts[i % len(texts)]})
                connection.request("POST", "/predict", body=body, headers=JSON)
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


def slow_client(port: int, stop: threading.Event) -> None:
    """Sends a small body 8 bytes every 50 ms (within --body-timeout), again and again."""
    body = json.dumps({"text": "a slow client " * 8}).encode()
    head = "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
            for start in range(0, len(body), 8):
                if stop.wait(0.05):
                    break
                sock.sendall(body[start : start + 8])
            else:
                sock.recv(65536)


def big_client(port: int, stop: threading.Event, text: str, sent: list[int]) -> None:
    """Posts one 1 MB text per request, in a loop."""
    body = json.dumps({"text": text})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while not stop.is_set():
        connection.request("POST", "/predict", body=body, headers=JSON)
        connection.getresponse().read()
        sent.append(1)
    connection.close()


def abuse_mix(port: int, texts: list[str], requests: int, abusers: int) -> dict:
    """Small requests' latency from 8 clients, quiet and then among slow clients and 1 MB texts."""
    quiet = load_test(port, texts, 8, requests)
    stop, sent = threading.Event(), []
    big_texts = ["a" * 1_000_000, " " * 999_999 + "x"]
    threads = [threading.Thread(target=slow_client, args=(port, stop)) for _ in range(abusers)]
    threads += [
        threading.Thread(target=big_client, args=(port, stop, big_texts[i % 2], sent)) for i in range(abusers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1)
    abused = load_test(port, texts, 8, requests)
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "abusers": f"{abusers} slow + {abusers} posting 1 MB",
        "big_requests_answered": len(sent),
        "quiet": quiet,
        "abused": abused,
        "p99_ratio": round(abused["p99_ms"] / quiet["p99_ms"], 2),
    }


def markdown(results: dict) -> str:
    offline = results["offline"]["texts_per_s"]
    lines = [
        "| model file | clients | requests | errors | requests/s | p50 | p99 | mean batch | of offline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["server"]:
        lines.append(
            f"| {r['format']} | {r['clients']} | {r['requests']} | {r['errors']} | "
            f"{r['requests_per_s']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
            f"{r['mean_batch']:.1f} | {r['requests_per_s'] / offline:.2f}x |"
        )
    texts, batch = results["offline"]["texts"], results["max_batch_size"]
    lines.append(
        f"| offline `predict_texts` (torch) | | {texts} texts | | {offline:.1f} | | | {batch} | 1.00x |"
    )
    if results.get("abuse"):
        lines += ["", abuse_markdown(results["abuse"])]
    return "\n".join(lines)


def abuse_markdown(abuse: dict) -> str:
    lines = [
        f"| 8 clients of small texts ({abuse['format']}) | requests/s | p50 | p99 | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("quiet", "abused"):
        r = abuse[name]
        label = "quiet" if name == "quiet" else f"among {abuse['abusers']}"
        lines.append(
            f"| {label} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms "
            f"| {r['errors']} |"
        )
    lines.append(
        f"\np99 under abuse / quiet p99: {abuse['p99_ratio']}x; "
        f"1 MB requests answered meanwhile: {abuse['big_requests_answered']}"
    )
    return "\n".join(lines)


def serve_levels(
    path: Path, name: str, texts: list[str], args: argparse.Namespace, *, abuse_too: bool
) -> tuple[list, dict | None]:
    """One server for one model file: each number of clients, then (if asked) the abuse mix."""
    proc, port = start_server(path, args.max_batch_size, args.max_wait_ms)
    rows, abuse = [], None
    try:
        load_test(port, texts, clients=4, requests=2 * args.max_batch_size)  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            rows.append({"format": name, **load_test(port, texts, clients, args.requests)})
            print(json.dumps(rows[-1]), flush=True)
        if abuse_too:
            abuse = {"format": name, **abuse_mix(port, texts, args.requests, args.abusers)}
            print(json.dumps(abuse), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows, abuse


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-small", help="gpt2-small, gpt2-medium, ... or gpt2-tiny")
    parser.add_argument(
        "--clients", default="1,8,32,128", help="comma-separated numbers of concurrent clients"
    )
    parser.add_argument("--requests", type=int, default=800, help="requests per number of clients")
    parser.add_argument("--formats", default="ckpt", help="comma-separated: ckpt, onnx (fp32), int8 (onnx)")
    parser.add_argument("--abuse", action="store_true", help="also run the abuse mix (on the first format)")
    parser.add_argument("--abusers", type=int, default=4, help="slow clients, and as many posting 1 MB texts")
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
        paths = model_files(checkpoint, args.formats.split(","))

        sample = (texts * (args.requests // len(texts) + 1))[: args.requests]
        seconds = [offline_seconds(checkpoint, sample, args.max_batch_size)]
        server, abuse = [], None
        for number, (name, path) in enumerate(paths.items()):
            rows, found = serve_levels(path, name, texts, args, abuse_too=args.abuse and number == 0)
            server += rows
            abuse = abuse or found
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
        "abuse": abuse,
    }
    if args.out:
        write_json_atomic(results, args.out)
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
