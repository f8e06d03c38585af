"""The frozen-trunk cache's memory budget: past it, states go to a file and training stays exact.

A run whose cache exceeds `finetune.cache_budget_gb` (or the automatic budget inside a memory cgroup
smaller than the cache) finishes with the same metrics as an unlimited run, its cache on disk during
the run and gone after it, also when the run fails.
"""

import json
import logging
import os
import random
import subprocess
import sys
import uuid
from collections import namedtuple
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
from helpers import TINY_MODEL, adamw, cli_env, quiet_trainer

from gpt_classifier.data.datamodule import TextClassificationDataModule
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.training import trunk_cache as cache_module
from gpt_classifier.training.lightning_module import GPTClassifier
from gpt_classifier.training.memory_budget import cgroup_headroom, memory_cgroup_dirs

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ROWS = {"train": 160, "validation": 40, "test": 60}


@pytest.fixture(scope="module")
def datamodule(sms_split_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sms_small")
    for split, rows in ROWS.items():
        pd.read_csv(sms_split_dir / f"{split}.csv").head(rows).to_csv(folder / f"{split}.csv", index=False)
    dm = TextClassificationDataModule(folder, ["not spam", "spam"])
    dm.setup()
    return dm


class Watch(L.Callback):
    """The cache's files while training ran, and a failure on demand after `fail_at` steps."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.files: dict[str, Path | None] = {}
        self.fail_at = fail_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        splits = pl_module.cache.splits if pl_module.cache is not None else {}
        self.files = {s: c.path for s, c in splits.items() if c.path and c.path.is_file()}
        if self.fail_at is not None and batch_idx + 1 == self.fail_at:
            raise RuntimeError("killed for the test")


def fit(dm, root: Path, budget_gb, watch: Watch | None = None):
    L.seed_everything(7)
    module = GPTClassifier(
        TINY_MODEL,
        dm.class_names,
        finetune={"cache_frozen": True, "cache_budget_gb": budget_gb},
        data={"max_length": dm.max_length, "padding": dm.padding, "pad_token_id": dm.pad_token_id},
        optimizer=adamw(1e-3),
    )
    watch = watch or Watch()
    trainer = quiet_trainer(default_root_dir=root, max_epochs=2, limit_train_batches=6, callbacks=[watch])
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    return module, watch


def test_cache_past_its_budget_spills_to_disk_and_trains_the_same(datamodule, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gpt_classifier.training.trunk_cache")
    in_memory, watch_m = fit(datamodule, tmp_path / "memory", budget_gb=1000)
    spilled, watch_s = fit(datamodule, tmp_path / "spilled", budget_gb=0.0001)  # 100 kB
    assert not watch_m.files and not (tmp_path / "memory" / "cache").exists()
    assert set(watch_s.files) == {"train", "validation"}  # test is built at the final evaluation
    assert all(path.parent == tmp_path / "spilled" / "cache" for path in watch_s.files.values())
    assert not (tmp_path / "spilled" / "cache").exists()  # removed after the run
    assert in_memory.final_metrics.keys() == spilled.final_metrics.keys() and in_memory.final_metrics
    for key, value in in_memory.final_metrics.items():
        assert spilled.final_metrics[key] == pytest.approx(value, abs=1e-5, rel=0), key
    estimates = [r.getMessage() for r in caplog.records if "cache will take" in r.getMessage()]
    assert any("finetune.cache_budget_gb=0.0001" in line for line in estimates)


def test_a_failed_run_removes_its_cache_files(datamodule, tmp_path):
    watch = Watch(fail_at=2)
    with pytest.raises(RuntimeError, match="killed for the test"):
        fit(datamodule, tmp_path, budget_gb=0.0001, watch=watch)
    assert watch.files["train"].parent == tmp_path / "cache"
    assert not (tmp_path / "cache").exists()


def test_no_room_on_disk_either_runs_uncached(datamodule, tmp_path, monkeypatch, caplog):
    full = namedtuple("usage", "total used free")(10**9, 10**9, 0)
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: full)
    caplog.set_level(logging.INFO, logger="gpt_classifier.training.trunk_cache")
    module, watch = fit(datamodule, tmp_path, budget_gb=0.0001)
    assert module.cache is None and not watch.files and not (tmp_path / "cache").exists()
    assert {"train_acc", "val_acc", "test_acc"} <= module.final_metrics.keys()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fit neither the memory budget nor the disk" in warnings[0]


@pytest.mark.parametrize("budget", [-1, "1GB"])
def test_bad_budget_is_one_clear_error(budget):
    with pytest.raises(GPTClassifierError, match=r"finetune\.cache_budget_gb=.* must be a number of GB"):
        GPTClassifier(TINY_MODEL, ["a", "b"], finetune={"cache_budget_gb": budget})


def write_cgroup_files(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_headroom_is_the_tightest_cgroup_limit_v1_and_v2(tmp_path):
    v1 = tmp_path / "v1"
    write_cgroup_files(v1 / "memory", {"memory.limit_in_bytes": "9223372036854771712\n"})
    write_cgroup_files(
        v1 / "memory/job", {"memory.limit_in_bytes": "1000\n", "memory.usage_in_bytes": "300\n"}
    )
    write_cgroup_files(v1 / "memory/job/step", {"memory.limit_in_bytes": "9223372036854771712\n"})
    headroom = cgroup_headroom("5:cpu:/\n4:memory:/job/step\n0::/\n", root=v1)
    assert headroom.bytes == 700 and "job/memory.limit_in_bytes" in headroom.source
    v2 = tmp_path / "v2"
    write_cgroup_files(v2 / "slice", {"memory.max": "5000\n", "memory.current": "1000\n"})
    write_cgroup_files(v2 / "slice/unit", {"memory.max": "max\n", "memory.current": "900\n"})
    assert cgroup_headroom("0::/slice/unit\n", root=v2).bytes == 4000
    assert cgroup_headroom("0::/slice/unit\n", root=tmp_path / "none") is None
    assert memory_cgroup_dirs("1:cpu:/\n", root=v1) == []


CGROUP_V2 = Path("/sys/fs/cgroup/cgroup.controllers").is_file()


def own_memory_cgroup(version: str) -> Path | None:
    """This process's memory cgroup folder in hierarchy `version` (v1, v2), if we may make limited
    groups in it: root on v1; on v2 a writable group that hands the memory controller down."""
    for hierarchy, controllers, path in (
        line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()
    ):
        if version == "v1" and "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.strip("/")
        elif version == "v2" and CGROUP_V2 and hierarchy == "0":
            folder = Path("/sys/fs/cgroup") / path.strip("/")
            if "memory" not in (folder / "cgroup.subtree_control").read_text().split():
                continue
        else:
            continue
        if folder.is_dir() and os.access(folder, os.W_OK):
            return folder
    return None


def long_texts_split(folder: Path) -> Path:
    """Two classes of ~300-word texts, cut to 256 tokens: 400 x 256 states of width 192 = 75 MB."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    folder.mkdir()
    for split, rows in {"train": 400, "validation": 16, "test": 16}.items():
        labels = [i % 2 for i in range(rows)]
        texts = [("good " if y else "bad ") + " ".join(rng.choices(words, k=300)) for y in labels]
        pd.DataFrame({"Text": texts, "Label": labels}).to_csv(folder / f"{split}.csv", index=False)
    return folder


def run_child(tmp_path: Path, name: str, args: list[str]) -> dict:
    out = tmp_path / f"{name}.json"
    command = [
        sys.executable,
        str(SCRIPTS / "cache_budget_run.py"),
        str(tmp_path / "data"),
        str(tmp_path / name),
    ]
    done = subprocess.run(
        [*command, str(out), *args], env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())


def other_hierarchy(version: str) -> list[pytest.MarkDecorator]:
    """The variant for the cgroup hierarchy this machine does not run may skip, even in CI."""
    if (version == "v2") == CGROUP_V2:
        return []
    return [pytest.mark.optional_skip(reason=f"this machine runs cgroup {'v2' if CGROUP_V2 else 'v1'}")]


@pytest.mark.parametrize("version", [pytest.param(v, marks=other_hierarchy(v)) for v in ("v1", "v2")])
def test_automatic_budget_inside_a_small_memory_cgroup_spills_and_trains_the_same(tmp_path, version):
    own = own_memory_cgroup(version)
    if own is None:
        pytest.skip(f"needs a writable cgroup {version} memory hierarchy that can make limited groups")
    long_texts_split(tmp_path / "data")
    group = own / f"gpt-classifier-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        limited = run_child(tmp_path, "limited", ["auto", str(group), "96"])
    finally:
        group.rmdir()
    unlimited = run_child(tmp_path, "unlimited", ["1000"])
    assert limited["spilled"]["train"]
    assert not any(unlimited["spilled"].values())
    assert limited["left_on_disk"] == [] and limited["limit"] is not None
    assert any("cgroup" in line and "will take" in line for line in limited["log"]), limited["log"]
    for key, value in unlimited["metrics"].items():
        assert limited["metrics"][key] == pytest.approx(value, abs=1e-5, rel=0), key
