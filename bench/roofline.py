"""The roofline of the speed bench: per phase, the least time this machine needs for its FLOPs and bytes.

For each mode of `bench/finetune_speed.py` (a, b, c: gpt2-small, the book's SMS split, batch 8, 5
epochs) and each phase that computes (cache pass, training steps, validation, checkpoints, final
evaluation), the floor is the larger of

    compute floor = FLOPs / the measured matmul rate (a 2048^3 fp32 matmul, `finetune_speed.matmul_gflops`)
    memory floor  = bytes moved / the measured memory bandwidth (a large tensor copy)

FLOPs come from the bench's own analytic model (`finetune_speed.block_flops`; the phases add up to
its `mode_flops`). Bytes count, in fp32: weights read by every batch's forward and backward pass,
gradients written, AdamW's reads and writes of parameters, gradients and both moments, the
activations each block reads and writes, the cached hidden states written and read back, and the
checkpoints written and read. It does not train: the measured seconds per phase come from a bench
result file (`bench/results_cpu.json`), and the table gives measured / roofline.

    python bench/roofline.py                        # seconds: measures this machine, prints the table
    python bench/roofline.py --quick                # a tiny, rough measurement (tests)
    python bench/roofline.py --results other.json   # another bench run's measured seconds
    python bench/roofline.py --matmul-gflops 214    # a rate measured beside the bench run (its JSON)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is scripts, not a package
from finetune_speed import ROOT, block_flops, matmul_gflops, mode_flops

FLOAT = 4  # bytes: fp32 weights, activations, gradients, optimizer state and cached states
ADAMW_ACCESSES = 7  # per trainable parameter and step: read param, grad, exp_avg, exp_avg_sq; write three
CHUNK_TOKENS = 1024  # the cache pass runs packed chunks of about this many tokens (TrunkCache)
PHASES = ("cache", "training", "validation", "checkpoints", "final_evaluation")  # phases.json keys
COLUMNS = (
    "mode",
    "phase",
    "GFLOP",
    "GB moved",
    "compute floor s",
    "memory floor s",
    "roofline floor s",
    "measured s",
    "measured / roofline",
)


def memory_gbps(megabytes: int = 128, seconds: float = 3.0) -> float:
    """Memory bandwidth, GB/s: the fastest of repeated copies of a tensor larger than the caches (read +
    write). The fastest, not the mean, so that other load on a shared machine counts as little as it can."""
    source = torch.ones(megabytes * 2**20 // FLOAT)
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page first
    best, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        target.copy_(source)
        best = max(best, 2 * source.numel() * FLOAT / (time.perf_counter() - begin) / 1e9)
    return best


def block_activation_floats(tokens: int, queries: int, dim: int, heads: int) -> int:
    """Floats one block's forward pass reads and writes besides its weights: at every key/value
    position the LayerNorm and the key and value projections (5 x dim); at every query position the
    query, attention output, projections, MLP (4 x dim wide), GELU, LayerNorms and residual adds
    (29 x dim); and the attention scores, written, softmaxed in place and read (4 per head, query, key)."""
    return 5 * dim * tokens + 29 * dim * queries + 4 * heads * queries * tokens


@dataclass
class ModeWork:
    """FLOPs and bytes of one bench mode, phase by phase, counted as `finetune_speed.mode_flops` counts."""

    mode: str
    lengths: dict[str, list[int]]  # token counts per split
    pad: int  # the padded width of modes a and b
    cfg: dict  # the model config (conf/model/<name>.yaml)

    def __post_init__(self) -> None:
        dim, layers = self.cfg["emb_dim"], self.cfg["n_layers"]
        self.block_params = 12 * dim * dim + 13 * dim  # attention, MLP, two LayerNorms
        self.trained_params = self.block_params + 2 * dim + 2 * dim + 2  # + final_norm + 2-class head
        embeddings = (self.cfg["vocab_size"] + self.cfg["context_length"]) * dim
        self.total_params = layers * self.block_params + embeddings + 2 * dim
        self.trunk = layers - 1 if self.mode == "a" else 0  # frozen blocks each batch runs (a: no cache)

    def width(self, n: int) -> int:
        return self.pad if self.mode in ("a", "b") else n

    def block(self, n: int, *, every_position: bool) -> tuple[float, float]:
        """FLOPs and activation bytes of one block's forward pass over a text of `n` tokens; in b and c
        the last block runs its queries at the read position only."""
        dim, heads, width = self.cfg["emb_dim"], self.cfg["n_heads"], self.width(n)
        queries = width if every_position or self.mode == "a" else 1
        return block_flops(width, queries, dim), FLOAT * block_activation_floats(width, queries, dim, heads)

    def texts(self, texts: list[int], trained_passes: int) -> tuple[float, float]:
        """The frozen blocks forward (mode a), the last block `trained_passes` times (3: forward and
        backward) and, with the cache, reading the cached states."""
        flops = moved = 0.0
        for n in texts:
            trunk, tail = self.block(n, every_position=True), self.block(n, every_position=False)
            flops += self.trunk * trunk[0] + trained_passes * tail[0]
            moved += self.trunk * trunk[1] + trained_passes * tail[1]
            moved += FLOAT * self.width(n) * self.cfg["emb_dim"] if self.mode != "a" else 0
        return flops, moved

    def evaluation(self, splits: list[list[int]]) -> tuple[float, float]:
        """Forward passes in batches of 64 (data.eval_batch_size): each batch reads the weights once."""
        flops, moved = self.texts([n for split in splits for n in split], trained_passes=1)
        weights = FLOAT * (self.trunk + 1) * self.block_params
        return flops, moved + sum(math.ceil(len(split) / 64) * weights for split in splits)

    def cache(self) -> tuple[float, float]:
        """The cache pass (b, c): the frozen blocks over every split once, in packed chunks."""
        if self.mode == "a":
            return 0.0, 0.0
        every = [n for split in self.lengths.values() for n in split]
        frozen, dim = self.cfg["n_layers"] - 1, self.cfg["emb_dim"]
        flops = sum(frozen * self.block(n, every_position=True)[0] for n in every)
        moved = sum(
            frozen * self.block(n, every_position=True)[1] + FLOAT * self.width(n) * dim for n in every
        )
        chunks = math.ceil(sum(self.width(n) for n in every) / CHUNK_TOKENS)
        return flops, moved + chunks * FLOAT * frozen * self.block_params

    def phases(self, epochs: int) -> dict[str, tuple[float, float]]:
        """(FLOPs, bytes) per phase of a run of `epochs` epochs."""
        steps = len(self.lengths["train"]) // 8  # batch 8, the last partial batch dropped
        flops, moved = self.texts(self.lengths["train"][: steps * 8], trained_passes=3)
        step_weights = FLOAT * (self.trunk * self.block_params + (3 + ADAMW_ACCESSES) * self.trained_params)
        val_flops, val_moved = self.evaluation([self.lengths["validation"]])
        checkpoint = FLOAT * (self.total_params + 2 * self.trained_params)  # weights, AdamW's moments
        work = {
            "cache": self.cache(),
            "training": (epochs * flops, epochs * (moved + steps * step_weights)),
            "validation": (epochs * val_flops, epochs * val_moved),
            "checkpoints": (0.0, (epochs + 1) * checkpoint),  # one written per epoch, the best read back
            "final_evaluation": self.evaluation(list(self.lengths.values())),
        }
        total = sum(f for f, _ in work.values())
        assert math.isclose(total, mode_flops(self.mode, self.lengths, self.pad, self.cfg, epochs))
        return work


def sms_lengths(data_dir: Path) -> tuple[dict[str, list[int]], int]:
    """Token counts per split of the book's SMS split, and the padded width (the longest training text)."""
    from gpt_classifier.data.sms import SpamDataModule

    data = SpamDataModule(data_dir=data_dir)
    data.prepare_data()
    data.setup()
    return {split: list(ds.lengths) for split, ds in data.datasets.items()}, data.max_length


def measured_seconds(results: Path) -> dict[str, dict[str, float]]:
    """Wall seconds per phase of each mode in a `finetune_speed.py --out` file ({} when there is none)."""
    if not results.is_file():
        return {}
    data = json.loads(results.read_text())
    return {mode: data[mode]["phases"]["wall"] for mode in ("a", "b", "c") if mode in data}


def cell(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def table_rows(work: dict, gflops: float, gbps: float, measured: dict) -> list[list[str]]:
    """One row per mode and phase, and a total per mode: the floors and measured / roofline."""
    rows = []
    for mode, phases in work.items():
        totals = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        for phase, (flops, moved) in [*phases.items(), ("total", (None, None))]:
            if moved is None:  # the mode's total: the sum of its phases' floors
                flops, moved, compute, memory, roof, seconds = totals
            else:
                compute, memory = flops / (gflops * 1e9), moved / (gbps * 1e9)
                roof, seconds = max(compute, memory), measured.get(mode, {}).get(phase, math.nan)
                for i, value in enumerate((flops, moved, compute, memory, roof, seconds)):
                    totals[i] += value
            ratio = seconds / roof if roof > 0 else math.nan
            floors = [f"{value:.2f}" for value in (compute, memory, roof)]
            rows.append(
                [
                    mode,
                    phase,
                    f"{flops / 1e9:.0f}",
                    f"{moved / 1e9:.2f}",
                    *floors,
                    cell(seconds, 1),
                    cell(ratio, 2),
                ]
            )
    return rows


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny, rough measurement (256^3 matmul, 16 MB copy)"
    )
    parser.add_argument("--model", default="gpt2-small", help="model config name (conf/model)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "sms_spam", help="the SMS split")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results_cpu.json")
    parser.add_argument("--matmul-gflops", type=float, help="use this matmul rate instead of measuring it")
    parser.add_argument("--memory-gbps", type=float, help="use this memory bandwidth instead of measuring it")
    args = parser.parse_args()

    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml"))
    lengths, pad = sms_lengths(args.data_dir)
    size, megabytes, seconds = (256, 16, 0.2) if args.quick else (2048, 128, 3.0)
    gflops = args.matmul_gflops or matmul_gflops(size=size, seconds=seconds)
    gbps = args.memory_gbps or memory_gbps(megabytes=megabytes, seconds=seconds)
    work = {mode: ModeWork(mode, lengths, pad, cfg).phases(args.epochs) for mode in ("a", "b", "c")}
    print(
        f"{args.model}, SMS split {len(lengths['train'])} / {len(lengths['validation'])} / "
        f"{len(lengths['test'])} texts padded to {pad}, batch 8, {args.epochs} epochs; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    given = {True: "given", False: "measured"}
    print(
        f"matmul rate ({given[bool(args.matmul_gflops)]}): {gflops:.0f} GFLOP/s; "
        f"memory bandwidth ({given[bool(args.memory_gbps)]}, copy): {gbps:.1f} GB/s"
    )
    print(f"measured seconds: {args.results if args.results.is_file() else 'none'}\n")
    print(markdown(table_rows(work, gflops, gbps, measured_seconds(args.results))))


if __name__ == "__main__":
    main()
