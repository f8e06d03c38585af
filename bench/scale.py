"""Data at scale: an IMDb-shaped synthetic set through tokenization, the cache pass and one epoch.

    python bench/scale.py                      # 35,000 texts of ~256 tokens (the book's IMDb train split)
    python bench/scale.py --texts 2000         # a smaller scale, same shape

A gpt2-small-width model (768, 12 heads) with 2 layers, the book's last-block policy (block 0 frozen
and cached), 256 tokens, batch 8. Each mode runs in its own process, so that its peak RSS is its own:
`memory` (the cache in RAM) and `disk` (budget 0: the cache spilled to a memory-mapped file).
Prints a Markdown table: tokenization time, cache pass tokens/s, cache size, peak RSS (which also
counts the mapped file's cached pages), anonymous RSS after the cache pass (what the kernel cannot
page out), epoch time.
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

MODEL = {
    "name": "gpt2-small-2-layers",
    "weights": "random",
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
    "causal": True,
}


def make_split(folder: Path, texts: int) -> None:
    """~300 common words per text (cut to 256 tokens), two classes, 1/7 and 2/7 of `texts` for val/test."""
    rng = random.Random(0)
    words = [
        "the",
        "a",
        "film",
        "movie",
        "good",
        "bad",
        "plot",
        "actor",
        "scene",
        "story",
        "great",
        "awful",
        "love",
        "hate",
    ]
    sizes = {"train": texts, "validation": texts // 7, "test": 2 * texts // 7}
    for split, n in sizes.items():
        labels = [rng.randrange(2) for _ in range(n)]
        rows = [" ".join(rng.choices(words, k=300)) + (" good" if y else " bad") for y in labels]
        pd.DataFrame({"Text": rows, "Label": labels}).to_csv(folder / f"{split}.csv", index=False)


def rss_anon_mb() -> int:
    """Anonymous resident memory (`RssAnon`): RSS also counts a memory-mapped file's cached pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return round(int(line.split()[1]) / 1024)
    return -1


def run_mode(folder: Path, mode: str) -> dict:
    import lightning as L
    import torch

    from gpt_classifier.data.datamodule import TextClassificationDataModule
    from gpt_classifier.training.lightning_module import GPTClassifier

    torch.manual_seed(0)
    started = time.perf_counter()
    dm = TextClassificationDataModule(folder, ["bad", "good"], max_length=256, eval_batch_size=64)
    dm.setup()
    tokenize_s = time.perf_counter() - started
    budget = None if mode == "memory" else 0
    optimizer = lambda params: torch.optim.AdamW(params, lr=5e-5, weight_decay=0.1)  # noqa: E731
    module = GPTClassifier(
        MODEL,
        dm.class_names,
        finetune={"policy": "last_block", "cache_frozen": True, "cache_budget_gb": budget},
        data={"max_length": dm.max_length, "padding": dm.padding, "pad_token_id": dm.pad_token_id},
        optimizer=optimizer,
        cache_dir=folder / f"cache-{mode}",
    )
    started = time.perf_counter()
    module.cache.build("train", dm.token_ids("train"))
    cache_s = time.perf_counter() - started
    spilled = module.cache.splits["train"].path is not None
    anon_mb = rss_anon_mb()  # what cannot be paged out: the spilled file's pages can
    nbytes = module.cache.splits["train"].nbytes
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    epoch_s = time.perf_counter() - started
    module.cache.clear()
    tokens = int(sum(len(ids) for ids in dm.token_ids("train")))
    return {
        "mode": mode,
        "texts": len(dm.token_ids("train")),
        "tokenize_s": round(tokenize_s, 1),
        "cache_tokens_per_s": round(tokens / cache_s),
        "cache_mb": round(nbytes / 2**20),
        "spilled": spilled,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "anon_mb": anon_mb,
        "epoch_s": round(epoch_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=35_000, help="training texts (default: 35,000)")
    parser.add_argument("--mode", choices=["memory", "disk"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # one measurement, in its own process
        print(json.dumps(run_mode(args.folder, args.mode)))
        return
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        folder = Path(tmp)
        make_split(folder, args.texts)
        results = []
        for mode in ("memory", "disk"):
            command = [sys.executable, __file__, "--mode", mode, "--folder", str(folder)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        "| cache | train texts | tokenization | cache pass | cache size | peak RSS | anonymous RSS | epoch |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        where = "on disk (spilled)" if r["spilled"] else "in memory"
        print(
            f"| {where} | {r['texts']:,} | {r['tokenize_s']} s | {r['cache_tokens_per_s']:,} tokens/s "
            f"| {r['cache_mb']:,} MB | {r['peak_rss_mb']:,} MB | {r['anon_mb']:,} MB | {r['epoch_s']} s |"
        )


if __name__ == "__main__":
    main()
