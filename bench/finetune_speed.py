"""Fine-tuning speed, side by side: the book's computation against gpt-classifier's fast paths.

Modes (book settings otherwise: 5 epochs, batch 8, AdamW 5e-5, last_block, random weights):
  a  the book's computation: pad to the longest training message (120), every block at every position
  b  frozen-trunk cache + last block only at the read position, still padded to 120 (book-exact)
  c  frozen-trunk cache + read position only + dynamic padding + the last real token

Each mode runs `train.py` in its own process (so peak RSS is its own) and reports wall seconds,
CPU seconds (user + system, which other load on the machine barely changes), training tokens/s
(real tokens), peak RSS, final accuracies, FLOPs and their floor at this machine's measured fp32
matmul rate, and each run's per-phase seconds (`gpt_classifier.training.phases.PhaseTimer`: start-up,
cache pass, training steps, validation, checkpoints, final evaluation, reports; wall and CPU).
It then times batched prediction against one-at-a-time.

    python bench/finetune_speed.py                       # everything, ~25 min on 2 cores
    python bench/finetune_speed.py --modes b,c --epochs 1 --out bench.json
    python bench/finetune_speed.py --trainer gpu --no-predict       # on a GPU (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MODES = {
    "a": [
        "data.padding=max_length",
        "classifier.position=last",
        "finetune.cache_frozen=false",
        "classifier.read_positions_only=false",
    ],
    "b": [
        "data.padding=max_length",
        "classifier.position=last",
        "finetune.cache_frozen=true",
        "classifier.read_positions_only=true",
    ],
    "c": [
        "data.padding=dynamic",
        "classifier.position=flexible",
        "finetune.cache_frozen=true",
        "classifier.read_positions_only=true",
    ],
}
PHASE_NAMES = {  # phases.json keys (gpt_classifier.training.phases.PHASES) and their column headers
    "startup": "start-up",
    "cache": "cache pass",
    "training": "training steps",
    "validation": "validation",
    "checkpoints": "checkpoints",
    "final_evaluation": "final evaluation",
    "reports": "reports",
}
DESCRIPTIONS = {
    "a": "book computation (pad 120, no cache, all positions)",
    "b": "cache + read position only, pad 120 (book-exact)",
    "c": "cache + read position only + dynamic padding, last real token",
}


def matmul_gflops(size: int = 2048, seconds: float = 3.0, device: str = "cpu") -> float:
    """Sustained matmul rate of this machine (fp32 on the CPU, bf16 on a GPU), in GFLOP/s."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
        if device == "cuda":
            torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def block_flops(tokens: int, queries: int, dim: int) -> float:
    """Forward FLOPs of one transformer block: keys/values at `tokens`, the rest at `queries`."""
    kv = 2 * tokens * 2 * dim * dim
    rest = 2 * queries * (2 * dim * dim + 8 * dim * dim)  # query + output projections, MLP
    attention = 2 * 2 * queries * tokens * dim
    return kv + rest + attention


def mode_flops(mode: str, lengths: dict[str, list[int]], pad: int, cfg: dict, epochs: int) -> float:
    """Analytic FLOPs of a run: training (backward = 2x forward of the trained block), per-epoch
    validation and the final evaluation of all splits; plus the cache pass for b and c."""
    dim, layers = cfg["emb_dim"], cfg["n_layers"]
    steps = len(lengths["train"]) // 8 * 8  # the last partial batch is dropped

    def width(n: int) -> int:
        return pad if mode in ("a", "b") else n

    def full(n: int) -> float:
        return block_flops(width(n), width(n), dim)

    def tail(n: int) -> float:  # the last block as computed in this mode
        return full(n) if mode == "a" else block_flops(width(n), 1, dim)

    train_lengths = lengths["train"][:steps]
    if mode == "a":
        per_epoch = sum((layers - 1) * full(n) + 3 * tail(n) for n in train_lengths)
        per_epoch += sum(layers * full(n) for n in lengths["validation"])
        final = sum(layers * full(n) for split in lengths.values() for n in split)
        return epochs * per_epoch + final
    cache = sum((layers - 1) * full(n) for split in lengths.values() for n in split)
    per_epoch = sum(3 * tail(n) for n in train_lengths) + sum(tail(n) for n in lengths["validation"])
    final = sum(tail(n) for split in lengths.values() for n in split)
    return cache + epochs * per_epoch + final


def run_mode(mode: str, args: argparse.Namespace, out_dir: Path) -> dict:
    """One training run in a child process; wall time and peak RSS from the OS."""
    run_dir = out_dir / mode
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        f"model={args.model}",
        "model.weights=random",
        f"finetune={args.policy}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer={args.trainer}",
        "logger=none",
        "callbacks.progress_bar.refresh_rate=0",
        "+callbacks.phase_timer._target_=gpt_classifier.training.phases.PhaseTimer",  # writes phases.json
        f"data.data_dir={args.data_dir}",
        f"hydra.run.dir={run_dir}",
        *MODES[mode],
        *args.override,
    ]
    print(f"[{mode}] {DESCRIPTIONS[mode]}", flush=True)
    started = time.perf_counter()
    with open(out_dir / f"{mode}.log", "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mode {mode} failed: see {out_dir / f'{mode}.log'}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["phases"] = json.loads((run_dir / "phases.json").read_text())
    cpu = usage.ru_utime + usage.ru_stime  # robust to other load on the machine, unlike wall time
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "run_dir": str(run_dir),
        **metrics,
    }


def prediction_speed(checkpoint: Path, book_checkpoint: Path | None, texts: list[str]) -> dict:
    """Messages/s: batched `predict_texts` against the chapter's one-at-a-time `classify_review`."""
    from gpt_classifier.data.tokenizer import get_tokenizer
    from gpt_classifier.deploy.predictor import classify_review, predict_texts
    from gpt_classifier.model.checkpoint import load_classifier

    tokenizer, result = get_tokenizer(), {"messages": len(texts)}
    model = load_classifier(checkpoint)
    started = time.perf_counter()
    predict_texts(texts, model, tokenizer, "cpu")
    result["batched_msgs_per_s"] = len(texts) / (time.perf_counter() - started)
    for name, path in (("one_at_a_time", checkpoint), ("one_at_a_time_book", book_checkpoint)):
        if path is None:
            continue
        single = load_classifier(path)
        started = time.perf_counter()
        for text in texts:
            classify_review(text, single, tokenizer, "cpu")
        result[f"{name}_msgs_per_s"] = len(texts) / (time.perf_counter() - started)
    return result


def phase_table(results: dict) -> list[str]:
    """Per-phase wall seconds (CPU seconds in brackets) of each mode, from the runs' phases.json."""
    rows = [
        "| mode | " + " | ".join(PHASE_NAMES.values()) + " | total | to first batch |",
        "|---|" + "---:|" * (len(PHASE_NAMES) + 2),
    ]
    for mode in (m for m in ("a", "b", "c") if m in results):
        p = results[mode]["phases"]
        cells = [f"{p['wall'][k]:.1f} ({p['cpu'][k]:.1f})" for k in PHASE_NAMES]
        total = f"{p['total_wall']:.1f} ({p['total_cpu']:.1f})"
        rows.append(f"| {mode} | " + " | ".join(cells) + f" | {total} | {p['to_first_batch']:.1f} |")
    return rows


def markdown(results: dict, gflops: float) -> str:
    rows = [
        "| mode | what | wall s | CPU s | train tokens/s | peak RSS MB | train / val / test acc % | TFLOP | "
        "floor s | wall / floor | speed-up vs a (wall) | (CPU time) |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    base = results.get("a", {}).get("wall_seconds")
    for mode in ("a", "b", "c"):
        if mode not in results:
            continue
        r = results[mode]
        accs = " / ".join(f"{100 * r[k]:.2f}" for k in ("train_acc", "val_acc", "test_acc"))
        speedup = f"{base / r['wall_seconds']:.1f}x" if base else "-"
        cpu_speedup = f"{results['a']['cpu_seconds'] / r['cpu_seconds']:.1f}x" if base else "-"
        rows.append(
            f"| {mode} | {DESCRIPTIONS[mode]} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} | "
            f"{r['train_tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {accs} | {r['flops'] / 1e12:.1f} | "
            f"{r['floor_seconds']:.0f} | {r['wall_seconds'] / r['floor_seconds']:.2f} | {speedup} | "
            f"{cpu_speedup} |"
        )
    rows += ["", *phase_table(results)]
    rows.append(f"\nmatmul rate (2048^3): {gflops:.0f} GFLOP/s")
    if "predict" in results:
        p = results["predict"]
        line = f"prediction ({p['messages']} test messages): batched {p['batched_msgs_per_s']:.1f} msg/s"
        for key, label in (
            ("one_at_a_time", "one at a time, same model"),
            ("one_at_a_time_book", "one at a time, book (pad 120)"),
        ):
            if f"{key}_msgs_per_s" in p:
                rate = p[f"{key}_msgs_per_s"]
                line += f"; {label} {rate:.1f} msg/s ({p['batched_msgs_per_s'] / rate:.1f}x)"
        rows.append(line)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-small", help="model config name (conf/model)")
    parser.add_argument("--policy", default="last_block", help="finetune policy (conf/finetune)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--modes", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--no-predict", action="store_true", help="skip the prediction benchmark")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--dir", type=Path, default=ROOT / "outputs" / "bench", help="run folders and logs")
    parser.add_argument("--trainer", default="cpu", help="trainer config (conf/trainer): cpu, gpu, ...")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "sms_spam", help="the SMS split")
    parser.add_argument("--matmul-seconds", type=float, default=3.0, help="how long to time the matmul rate")
    parser.add_argument(
        "--override", action="append", default=[], help="one more train.py override (repeatable)"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}: use a, b, c")
    args.dir.mkdir(parents=True, exist_ok=True)

    from omegaconf import OmegaConf

    from gpt_classifier.data.sms import SpamDataModule

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml"))
    data = SpamDataModule(data_dir=args.data_dir)
    data.prepare_data()
    data.setup()
    lengths = {split: ds.lengths for split, ds in data.datasets.items()}
    real_train_tokens = sum(lengths["train"][: len(lengths["train"]) // 8 * 8])

    device = "cuda" if args.trainer in ("gpu", "ddp", "fsdp") and torch.cuda.is_available() else "cpu"
    gflops = matmul_gflops(seconds=args.matmul_seconds, device=device)
    print(f"matmul ({device}): {gflops:.0f} GFLOP/s", flush=True)
    results: dict = {}
    for mode in modes:
        r = run_mode(mode, args, args.dir)
        r["train_tokens_per_s"] = args.epochs * real_train_tokens / r["train_seconds"]
        r["flops"] = mode_flops(mode, lengths, data.max_length, cfg, args.epochs)
        r["floor_seconds"] = r["flops"] / (gflops * 1e9)
        results[mode] = r
        print(json.dumps({mode: r}, indent=1), flush=True)
    if not args.no_predict and "c" in results:
        test_texts = data.read_split("test")["Text"].astype(str).tolist()
        book = Path(results["a"]["run_dir"]) / "checkpoints" / "last.ckpt" if "a" in results else None
        results["predict"] = prediction_speed(
            Path(results["c"]["run_dir"]) / "checkpoints" / "last.ckpt", book, test_texts
        )
    gflops = max(gflops, matmul_gflops(seconds=args.matmul_seconds, device=device))  # the better of the two
    for r in (results[m] for m in modes):
        r["floor_seconds"] = r["flops"] / (gflops * 1e9)
    results["matmul_gflops"] = gflops
    results["matmul_device"] = device
    table = markdown(results, gflops)
    print("\n" + table)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
