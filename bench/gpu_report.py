"""One report of `bench/gpu_check.sh`: its stages, the speed benchmark and the book's table.

Reads the check's output folder (stages.tsv, bench.json, book/**/metrics.json with each run's
composed config) and writes gpu_check.json and gpu_check.md there. Exits 1 if a stage did not
finish ok, so that the dry run in the test suite fails loudly.

    python bench/gpu_report.py outputs/gpu_check --dry-run=0 --seconds 512
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import markdown  # the bench's own tables


def book_rows(folder: Path) -> list[dict]:
    """One row per finished book run: its preset, the book's figures, our accuracies and time."""
    rows = []
    for metrics_file in sorted(folder.rglob("metrics.json")):
        run = metrics_file.parent
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        metrics = json.loads(metrics_file.read_text())
        book = config.get("book") or {}
        rows.append(
            {
                "row": book.get("row"),
                "preset": run.name if run.parent.name == "book" else _preset(run),
                "epochs": config["trainer"]["max_epochs"],
                "model": config["model"]["name"],
                "train_seconds": metrics.get("train_seconds"),
                **{k: metrics.get(k) for k in ("train_acc", "val_acc", "test_acc")},
                "book": {k: v for k, v in book.items() if k != "row"},
            }
        )
    return sorted(rows, key=lambda r: r["row"] or 0)


def _preset(run: Path) -> str:
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), run.name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--dry-run", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=0, help="the whole check's wall seconds")
    args = parser.parse_args()
    stages = [
        dict(zip(("stage", "status", "seconds"), line.split("\t"), strict=True))
        for line in (args.folder / "stages.tsv").read_text().splitlines()
    ]
    bench_file = args.folder / "bench.json"
    bench = json.loads(bench_file.read_text()) if bench_file.is_file() else None
    report = {
        "dry_run": bool(args.dry_run),
        "seconds": args.seconds,
        "stages": stages,
        "bench": bench,
        "book": book_rows(args.folder / "book"),
    }
    (args.folder / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

    lines = [f"# GPU check{' (dry run: CPU, tiny model)' if args.dry_run else ''}: {args.seconds} s", ""]
    lines += ["| stage | status | s |", "|---|---|---:|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in stages]
    if bench:
        lines += ["", "## Speed benchmark", "", markdown(bench, bench["matmul_gflops"])]
    lines += ["", "## The book's table (random weights)", ""]
    lines += ["| row | preset | epochs | train / val / test % | train s | book train / val / test % |"]
    lines += ["|---:|---|---:|---|---:|---|"]
    for r in report["book"]:
        ours = " / ".join(f"{100 * r[k]:.2f}" for k in ("train_acc", "val_acc", "test_acc"))
        theirs = " / ".join(str(r["book"].get(k, "-")) for k in ("train_acc", "val_acc", "test_acc"))
        cells = (r["row"], r["preset"], r["epochs"], ours, r["train_seconds"], theirs)
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (args.folder / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [s["stage"] for s in stages if s["status"] != "ok"]
    if failed:
        where = f"see their logs in {args.folder}"
        print(f"gpu_check: stages not ok: {', '.join(failed)} ({where})", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
