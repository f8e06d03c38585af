"""Scoring a corpus, side by side in one run: texts/s and peak memory of `predict.py --input`.

The corpus is a generated multi-line CSV (an id, a text of 1 to 9 lines, a note). Each case runs in
a fresh process, so its peak RSS is its own:

  ckpt          the checkpoint in torch, one process (`predict.py CKPT --input in.csv --output ...`)
  onnx int8     the same model exported with `--quantize int8`, ONNX Runtime
  ray           Ray Data on a local 2-CPU cluster, 2 actors of half a CPU each (the reading and
                writing tasks need the rest; `ray_scoring.score_dataset`); the RSS is the driver's
  ckpt big      `--big-rows` rows: memory stays flat as the file grows (one chunk in memory)
  resume        a run killed (SIGKILL) halfway, then the same command: its time against the full run

The model is `--model` (a conf/model name) with random weights, saved in train.py's layout; the
weights do not change the cost.

    python bench/score_speed.py                                  # 20k / 200k rows, gpt2-tiny: minutes
    python bench/score_speed.py --rows 100000 --big-rows 1000000 # the full size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
LINES = [
    "Dear customer, your parcel is waiting.",
    "Call 0800 now to claim your prize!",
    "See you at 8, bring the wine.",
]


def write_corpus(path: Path, rows: int) -> Path:
    """`rows` multi-line texts, written in slices so that even a large corpus is built in little memory."""
    for start in range(0, rows, 50_000):
        ids = range(start, min(start + 50_000, rows))
        texts = ["\n".join(LINES[(i + k) % 3] for k in range(1 + i % 9)) for i in ids]
        frame = pd.DataFrame({"id": ids, "text": texts, "note": [f"n{i}" for i in ids]})
        frame.to_csv(path, index=False, header=start == 0, mode="w" if start == 0 else "a")
    return path


def write_models(folder: Path, model_name: str) -> tuple[Path, Path]:
    """A random-weight checkpoint of `model_name` and its int8 ONNX export."""
    from gpt_classifier.deploy.onnx_export import export_onnx
    from gpt_classifier.model.checkpoint import load_classifier
    from gpt_classifier.model.classifier import build_classifier

    model = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{model_name}.yaml"))
    settings = {
        "model": {**model, "weights": "random"},
        "class_names": ["not spam", "spam"],
        "finetune": {"policy": "last_block"},
        "classifier": {"position": "last"},
        "data": {"max_length": 120, "padding": "max_length"},
    }
    torch.manual_seed(123)
    state = {f"classifier.{k}": v for k, v in build_classifier(**settings).state_dict().items()}
    ckpt = folder / "model.ckpt"
    torch.save({"hyper_parameters": settings, "state_dict": state}, ckpt)
    onnx = folder / "model_int8.onnx"
    export_onnx(load_classifier(ckpt), onnx, quantize="int8")
    return ckpt, onnx


def run_case(case: str, model: Path, source: Path, output: Path) -> dict:
    """One case in this (fresh) process: seconds and peak RSS."""
    started = time.perf_counter()
    if case == "ray":
        import pyarrow.csv
        import ray

        from gpt_classifier.deploy.ray_scoring import score_dataset
        from gpt_classifier.deploy.scoring import ScoringOptions

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        parse = pyarrow.csv.ParseOptions(newlines_in_values=True)
        dataset = ray.data.read_csv(str(source), parse_options=parse)
        scored = score_dataset(dataset, model, ScoringOptions(), workers=2, cpus_per_worker=0.5)
        scored.write_parquet(str(output))  # half a CPU per actor: the reads and writes get the rest
        ray.shutdown()
    else:
        from gpt_classifier.cli.predict import main

        if main([str(model), "--input", str(source), "--output", str(output)]) != 0:
            raise SystemExit(f"{case} failed")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": peak}


def measure(case: str, model: Path, source: Path, output: Path, rows: int) -> dict:
    command = [sys.executable, __file__, "--case", case, str(model), str(source), str(output)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    return {"case": case, "rows": rows, "texts_per_s": rows / numbers["seconds"], **numbers}


def resume_cost(model: Path, source: Path, folder: Path, rows: int) -> dict:
    """A whole run, then a run killed when half its chunks are done and the same command again: the
    rerun's time against the whole run's (both including start-up), and whether the files are equal."""

    def command(output: Path) -> list[str]:
        return [
            sys.executable,
            str(ROOT / "predict.py"),
            str(model),
            "--input",
            str(source),
            "--output",
            str(output),
        ]

    started = time.perf_counter()
    subprocess.run(command(folder / "whole.csv"), check=True, stderr=subprocess.DEVNULL)
    whole = time.perf_counter() - started
    chunks = -(-rows // 1000)  # predict.py's default --chunk-rows
    parts = folder / "resumed.csv.parts"
    proc = subprocess.Popen(command(folder / "resumed.csv"), stderr=subprocess.DEVNULL)
    while len(list(parts.glob("0*.json"))) < chunks // 2 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("0*.json")))
    started = time.perf_counter()
    subprocess.run(command(folder / "resumed.csv"), check=True, stderr=subprocess.DEVNULL)
    rerun = time.perf_counter() - started
    identical = (folder / "whole.csv").read_bytes() == (folder / "resumed.csv").read_bytes()
    return {
        "chunks": chunks,
        "done_before_kill": done,
        "rerun_seconds": rerun,
        "whole_seconds": whole,
        "identical": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--big-rows", type=int, default=200_000)
    parser.add_argument("--model", default="gpt2-tiny", help="a conf/model name (gpt2-tiny)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--case", nargs=4, metavar=("CASE", "MODEL", "SOURCE", "OUTPUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.case:
        case, model, source, output = args.case
        print(json.dumps(run_case(case, Path(model), Path(source), Path(output))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt, onnx = write_models(folder, args.model)
        source = write_corpus(folder / "corpus.csv", args.rows)
        big = write_corpus(folder / "big.csv", args.big_rows)
        results = [
            measure("ckpt", ckpt, source, folder / "ckpt.csv", args.rows),
            measure("onnx int8", onnx, source, folder / "onnx.csv", args.rows),
            measure("ray", ckpt, source, folder / "ray_out", args.rows),
            measure("ckpt big", ckpt, big, folder / "big_out.csv", args.big_rows),
        ]
        resume = resume_cost(ckpt, source, folder, args.rows)
    print(f"{'case':<10} {'rows':>9} {'texts/s':>9} {'seconds':>8} {'peak RSS MiB':>13}")
    for r in results:
        rate, seconds, rss = r["texts_per_s"], r["seconds"], r["peak_rss_mib"]
        print(f"{r['case']:<10} {r['rows']:>9} {rate:>9.0f} {seconds:>8.1f} {rss:>13.0f}")
    print(
        f"resume: killed with {resume['done_before_kill']}/{resume['chunks']} chunks done; the rerun took "
        f"{resume['rerun_seconds']:.1f} s, a whole run {resume['whole_seconds']:.1f} s (both with start-up); "
        f"identical files: {resume['identical']}"
    )
    if args.out:
        args.out.write_text(json.dumps({"results": results, "resume": resume}, indent=2) + "\n")


if __name__ == "__main__":
    main()
