"""Serving throughput against the number of worker processes: `serve.py MODEL --workers N`.

A random-weight classifier (default gpt2-tiny; book settings: padded to 120 tokens) is saved as a
`.ckpt` and exported to an `.onnx` (`--format`). For each N of `--workers`, `serve.py` runs on
127.0.0.1 with N processes (each with cores // N threads) and, for each number of `--clients`, that
many threads send one SMS test text per request on keep-alive connections until `--requests` have
been answered: requests/s, p50 and p99 latency, errors. The ratio is requests/s against N=1 at the
same number of clients, measured in the same run.

    python bench/serve_workers.py                               # gpt2-tiny .onnx, 1 and 2 workers
    python bench/serve_workers.py --format ckpt --model gpt2-small --clients 32 --out workers.json
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
from serve_speed import make_checkpoint

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.data.sms import SpamDataModule
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.model.checkpoint import load_classifier

ROOT = Path(__file__).resolve().parent.parent


def start_workers(model: Path, workers: int) -> tuple[subprocess.Popen, int]:
    """`serve.py MODEL --workers N --port 0`, once every worker answers `/health`."""
    command = [sys.executable, str(ROOT / "serve.py"), str(model), "--port", "0", "--no-access-log"]
    proc = subprocess.Popen([*command, "--workers", str(workers)], stdout=subprocess.PIPE, text=True)
    port = int(re.search(r"http://[^ ]*:(\d+)", proc.stdout.readline()).group(1))
    pids: set[int] = set()
    deadline = time.monotonic() + 300
    while len(pids) < workers and time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/health")
            pids.add(json.loads(connection.getresponse().read())["pid"])
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    return proc, port


def measure(port: int, texts: list[str], clients: int, requests: int) -> dict:
    """`clients` threads share `requests` one-text requests: requests/s, p50 and p99 latency, errors."""
    latencies: list[float] = []
    failures: list[int] = []  # the status of each answer that is not 200

    def client(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for i in range(count):
            started = time.perf_counter()
            body = json.dumps({"text": texts[i % len(texts)]})
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
            latencies.append(time.perf_counter() - started)
        connection.close()

    threads = [threading.Thread(target=client, args=(requests // clients,)) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(failures),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * statistics.quantiles(latencies, n=100)[98], 1),
    }


def markdown(rows: list[dict]) -> str:
    single = {row["clients"]: row["requests_per_s"] for row in rows if row["workers"] == 1}
    lines = ["| workers | clients | requests | errors | requests/s | p50 | p99 | vs 1 worker |"]
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['requests_per_s'] / single[r['clients']]:.2f}x" if r["clients"] in single else ""
        lines.append(
            f"| {r['workers']} | {r['clients']} | {r['requests']} | {r['errors']} "
            f"| {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-tiny", help="gpt2-tiny (default), gpt2-small, ...")
    parser.add_argument("--format", choices=["onnx", "ckpt"], default="onnx", help="what the server loads")
    parser.add_argument("--workers", default="1,2", help="comma-separated numbers of worker processes")
    parser.add_argument("--clients", default="8,32", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="requests per number of clients")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        SpamDataModule(data_dir=folder / "split", urls=[], cache_dir=folder / "cache").prepare_data()
        texts = pd.read_csv(folder / "split" / "test.csv")["Text"].astype(str).tolist()
        model = make_checkpoint(args.model, folder, ["not spam", "spam"], max_length=120)
        if args.format == "onnx":
            export_onnx(load_classifier(model), model.with_suffix(".onnx"))
            model = model.with_suffix(".onnx")
        for workers in (int(n) for n in args.workers.split(",")):
            proc, port = start_workers(model, workers)
            try:
                measure(port, texts, clients=4, requests=64)  # warm-up
                for clients in (int(c) for c in args.clients.split(",")):
                    rows.append({"workers": workers, **measure(port, texts, clients, args.requests)})
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    settings = {"model": args.model, "format": args.format, "cores": os.cpu_count()}
    if args.out:
        write_json_atomic({**settings, "load_average": os.getloadavg(), "rows": rows}, args.out)
    print(f"\n{settings}\n\n{markdown(rows)}")


if __name__ == "__main__":
    main()
