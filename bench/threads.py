"""CPU threads under contention: `train.py experiment=demo` with each thread setting, quiet and busy.

    python bench/threads.py                      # 1 repetition per cell, about 3 minutes on 2 cores
    python bench/threads.py --repeats 3 --out bench/results_threads.json

Settings: the automatic default (`threads=null`), 1 and 2 threads, and torch's own default
(`threads=0`). Conditions: quiet (whatever else the machine runs: the load is printed) and beside
two busy processes that spin on the CPU for the length of the run. Each cell is the wall time of the
training (`train_seconds` in metrics.json) and of the whole process; the table marks each setting's
ratio to the best setting of its condition.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"automatic": "null", "1 thread": "1", "2 threads": "2", "torch's default": "0"}


def spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def demo_run(threads: str, out_dir: Path) -> tuple[float, float]:
    """(training seconds, process seconds) of one demo run with `threads=<threads>`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=demo",
        f"threads={threads}",
        "logger=none",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={out_dir}",
    ]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    process_seconds = time.perf_counter() - started
    return json.loads((out_dir / "metrics.json").read_text())["train_seconds"], process_seconds


def measure(condition: str, repeats: int, work: Path) -> dict[str, dict[str, float]]:
    rows = {}
    for name, value in SETTINGS.items():
        best = (float("inf"), float("inf"))
        for repeat in range(repeats):
            spinners = []
            if condition == "busy":
                stop_at = time.time() + 600
                spinners = [multiprocessing.Process(target=spin, args=(stop_at,)) for _ in range(2)]
                for process in spinners:
                    process.start()
            try:
                result = demo_run(value, work / f"{condition}-{value}-{repeat}")
            finally:
                for process in spinners:
                    process.terminate()
                    process.join()
            best = min(best, result)
        rows[name] = {"train_seconds": best[0], "process_seconds": best[1]}
        print(f"{condition:>6} {name:<16} train {best[0]:6.1f} s   process {best[1]:6.1f} s", flush=True)
    return rows


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| setting | quiet: training s | x best | busy (2 spinning processes): training s | x best |",
        "|---|---:|---:|---:|---:|",
    ]
    best = {c: min(r["train_seconds"] for r in rows.values()) for c, rows in results.items()}
    for name in SETTINGS:
        cells = []
        for condition in ("quiet", "busy"):
            seconds = results[condition][name]["train_seconds"]
            cells += [f"{seconds:.1f}", f"{seconds / best[condition]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the fastest counts (1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"{len(os.sched_getaffinity(0))} usable CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    with tempfile.TemporaryDirectory() as work:
        results = {c: measure(c, args.repeats, Path(work)) for c in ("quiet", "busy")}
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps({"load_average": load, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
