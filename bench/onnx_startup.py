"""Start-up to the first answer, with and without torch: `predict.py MODEL "hi"` until it has printed,
and `serve.py MODEL` until its first 200 from `/ready` (or `/health` where there is no `/ready`).

A random-weight classifier (default gpt2-tiny; book settings) is saved as a `.ckpt` and exported to
an `.onnx`. Each command runs `--repeats` times in a fresh process with OMP_NUM_THREADS=1; the
table gives the median wall time and the median CPU time (user + system, of the process and its
children: on a shared machine the wall time also counts the waits for a core). The `.onnx` rows run
with torch hidden (`tests/scripts/hide_torch`: `import torch` fails), as in an environment without it.

    python bench/onnx_startup.py                          # gpt2-tiny, 5 runs each
    python bench/onnx_startup.py --model gpt2-small --repeats 3 --out startup.json
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_speed import make_checkpoint

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.model.checkpoint import load_classifier

ROOT = Path(__file__).resolve().parent.parent
HIDE_TORCH = ROOT / "tests" / "scripts" / "hide_torch"


def environment(hide_torch: bool) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if hide_torch:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HIDE_TORCH), env.get("PYTHONPATH", "")]))
    return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_predict(model: Path, hide_torch: bool) -> tuple[float, float]:
    """Wall and CPU seconds of `predict.py MODEL "hi"`, start to exit."""
    cpu, start = children_cpu(), time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), str(model), "hi"],
        env=environment(hide_torch),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start, children_cpu() - cpu


def first_ready(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until `/ready` (or `/health`, on a server without `/ready`) answers 200."""
    deadline = time.monotonic() + timeout
    paths = ["/ready", "/health"]
    while time.monotonic() < deadline and proc.poll() is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", paths[0])
            status = conn.getresponse().status
            if status == 200:
                return
            if status == 404:
                paths.pop(0)
        except OSError:
            time.sleep(0.005)
        finally:
            conn.close()
    raise RuntimeError(f"serve.py did not become ready (exit {proc.poll()})")


def time_serve(model: Path, hide_torch: bool) -> tuple[float, float]:
    """Wall seconds of `serve.py MODEL --port 0` to its first ready answer; its CPU seconds to there
    and through its shutdown."""
    cpu, start = children_cpu(), time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), str(model), "--port", "0", "--no-access-log"],
        env=environment(hide_torch),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = int(re.search(r":(\d+)", proc.stdout.readline().rsplit("http://", 1)[-1]).group(1))
        first_ready(port, proc)
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()
    return wall, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-tiny", help="gpt2-tiny (default), gpt2-small, ...")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (median; default 5)")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(args.model, Path(tmp), ["not spam", "spam"], max_length=120)
        onnx = Path(tmp) / f"{args.model}.onnx"
        export_onnx(load_classifier(checkpoint), onnx)
        cases = {
            "predict.py MODEL.onnx (torch hidden)": (time_predict, onnx, True),
            "predict.py MODEL.ckpt (torch)": (time_predict, checkpoint, False),
            "serve.py MODEL.onnx to first ready (torch hidden)": (time_serve, onnx, True),
            "serve.py MODEL.ckpt to first ready (torch)": (time_serve, checkpoint, False),
        }
        results = {}
        for name, (measure, model, hide_torch) in cases.items():
            runs = [measure(model, hide_torch) for _ in range(args.repeats)]
            results[name] = {
                "wall_s": statistics.median(wall for wall, _ in runs),
                "cpu_s": statistics.median(cpu for _, cpu in runs),
            }
            print(
                f"{name}: {results[name]['wall_s']:.2f} s wall, {results[name]['cpu_s']:.2f} s CPU",
                flush=True,
            )
    print(f"\n{args.model}, median of {args.repeats} runs, OMP_NUM_THREADS=1\n")
    print("| command | wall (s) | CPU (s) |\n| --- | ---: | ---: |")
    for name, row in results.items():
        print(f"| {name} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} |")
    if args.out:
        write_json_atomic({"model": args.model, "repeats": args.repeats, "results": results}, args.out)


if __name__ == "__main__":
    main()
