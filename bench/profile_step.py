"""One training step of the cached tail, under `torch.profiler`: where a step's time goes.

The speed benchmark's modes (b) and (c) train only the last block, `final_norm` and the head of
gpt2-small on cached hidden states (batch 8). This script times that step's parts (forward,
backward, the fused AdamW update) and lists the operators that take the most CPU time, for the
book's padding to 120 (b) and for the real lengths of typical SMS (c). Random weights and states:
the cost does not depend on them.

    python bench/profile_step.py                 # both modes, 50 steps each after 10 warm-up steps
    python bench/profile_step.py --steps 20 --rows 15
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from gpt_classifier.model.classifier import build_classifier
from gpt_classifier.model.finetune import first_trainable_block
from gpt_classifier.model.packed import Packing

GPT2_SMALL = {"name": "gpt2-small", "weights": "random", "emb_dim": 768, "n_heads": 12, "n_layers": 12}
# Real lengths of 8 SMS from the book's train split (median ~25 tokens); (b) pads them all to 120.
SMS_LENGTHS = [14, 25, 31, 18, 42, 9, 27, 36]


def make_step(mode: str, batch_size: int = 8):
    """The tail's training step on cached states of `mode` ("b": padded to 120, "c": real lengths)."""
    torch.manual_seed(0)
    padding = "max_length" if mode == "b" else "dynamic"
    position = "last" if mode == "b" else "flexible"
    classifier = build_classifier(
        GPT2_SMALL,
        ["not spam", "spam"],
        {"policy": "last_block"},
        {"position": position},
        {"max_length": 120, "padding": padding},
    )
    start = first_trainable_block(classifier.model)
    lengths = torch.tensor((SMS_LENGTHS * batch_size)[:batch_size])
    widths = 120 if mode == "b" else lengths
    needed = classifier.reading.needed_lengths(lengths, widths)
    read_pos = classifier.reading.read_positions(lengths, widths)
    packing = Packing(needed, int(needed.max()))
    rows = torch.randn(int(needed.sum()), 768)
    labels = torch.randint(0, 2, (batch_size,))
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.1, fused=True)

    def step() -> None:
        with record_function("forward"):
            logits = classifier.logits_from_rows(
                rows, packing, read_pos=read_pos, lengths=lengths, start_block=start
            )
            loss = torch.nn.functional.cross_entropy(logits, labels)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rows", type=int, default=12, help="operators listed per mode")
    args = parser.parse_args()
    for mode in ("b", "c"):
        step, trainable = make_step(mode)
        for _ in range(args.warmup):
            step()
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        per_step = (time.perf_counter() - started) / args.steps * 1e3
        parts = {
            e.key: e.cpu_time_total / args.steps / 1e3
            for e in prof.key_averages()
            if e.key in ("forward", "backward", "optimizer")
        }
        print(f"\n({mode}) {trainable:,} trainable parameters: {per_step:.1f} ms a step (profiled)")
        print("  " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
