"""The book's table as presets: each composes to what its row changes, and all of them run."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("book_*.yaml"))

# What each row changes from the chapter's setting (the composed config must say so).
EXPECTED = {
    "book_default": {},
    "book_first_token": {"classifier.position": "first"},
    "book_last_layer": {"finetune.policy": "last_layer"},
    "book_last_two_blocks": {"finetune.policy": "last_two_blocks"},
    "book_all_layers": {"finetune.policy": "all"},
    "book_gpt2_medium": {"model.name": "gpt2-medium"},
    "book_gpt2_large": {"model.name": "gpt2-large"},
    "book_gpt2_xl": {"model.name": "gpt2-xl"},
    "book_gpt2_xl_all_layers": {"model.name": "gpt2-xl", "finetune.policy": "all"},
    "book_random_weights_all_layers": {"model.weights": "random", "finetune.policy": "all"},
    "book_lora_r16_a16": {"finetune.policy": "lora", "finetune.lora_rank": 16, "finetune.lora_alpha": 16},
    "book_gpt2_xl_lora_r16_a8": {
        "model.name": "gpt2-xl",
        "finetune.policy": "lora",
        "finetune.lora_alpha": 8,
    },
    "book_pad_to_context": {"data.max_length": "model"},
    "book_no_padding_batch1": {"data.padding": "none", "data.batch_size": 1},
    "book_no_padding_batch1_accum8": {
        "data.padding": "none",
        "data.batch_size": 1,
        "trainer.accumulate_grad_batches": 8,
    },
    "book_flexible_token": {"classifier.position": "flexible"},
    "book_no_causal_mask": {"model.causal": False},
    "book_ignore_index": {"loss.ignore_index": 50256},
    "book_mean_pooling": {"classifier.pooling": "mean"},
}
BOOK_DEFAULTS = {
    "model.name": "gpt2-small",
    "model.weights": "pretrained",
    "finetune.policy": "last_block",
    "classifier.position": "last",
    "classifier.pooling": "token",
    "data.padding": "max_length",
    "data.max_length": "longest",
    "data.batch_size": 8,
    "optimizer.lr": 5e-5,
    "optimizer.weight_decay": 0.1,
    "trainer.max_epochs": 5,
    "model.causal": True,
}


def test_one_preset_per_row():
    assert sorted(EXPECTED) == PRESETS
    rows = []
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for name in PRESETS:
            cfg = compose("train", overrides=[f"experiment={name}"])
            rows.append(cfg.book.row)
            for key, value in {**BOOK_DEFAULTS, **EXPECTED[name]}.items():
                node = cfg
                for part in key.split("."):
                    node = node[part]
                assert node == value, (name, key)
    assert sorted(rows) == list(range(1, 20))


@pytest.mark.timeout(700)  # the sweep's own limit (600 s) decides
def test_whole_table_is_one_command(tmp_path, sms_split_dir):
    """`-m 'experiment=glob(book_*)'` runs every row (tiny model, a few steps) into one summary."""
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "experiment=glob(book_*)",
            "model=gpt2-tiny",
            "model.weights=random",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=2",
            "callbacks.progress_bar.refresh_rate=0",
            "logger=none",
            f"data.data_dir={sms_split_dir}",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 19
    assert (summary["status"] == "ok").all(), summary[["overrides", "status", "error"]]
    assert sorted(summary["book_row"]) == list(range(1, 20))
    assert "book train / val / test %" in (tmp_path / "summary.md").read_text()
