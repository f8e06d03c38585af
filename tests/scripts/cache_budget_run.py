"""One cached fit + final evaluation of a tiny model, run as its own process by test_cache_budget.py.

    python cache_budget_run.py DATA_DIR ROOT_DIR OUT_JSON BUDGET_GB|auto [CGROUP_DIR MARGIN_MB]

With a memory cgroup CGROUP_DIR (v1 or v2) the process first moves itself into that memory cgroup, so that all
it allocates is charged there; once the data is tokenized and the model built, it limits the group
to its usage + MARGIN_MB: the automatic cache budget must then see the cgroup's limit, not the RAM.
"""

import json
import logging
import os
import sys
from pathlib import Path

data_dir, root_dir, out_json, budget = sys.argv[1:5]
cgroup = Path(sys.argv[5]) if len(sys.argv) > 5 else None
if cgroup is not None:
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py

import lightning as L  # noqa: E402
from helpers import TINY_MODEL, adamw, quiet_trainer  # noqa: E402

from gpt_classifier.data.datamodule import TextClassificationDataModule  # noqa: E402
from gpt_classifier.training.lightning_module import GPTClassifier  # noqa: E402

MODEL = {**TINY_MODEL, "emb_dim": 192}


class Recorder(L.Callback):
    """Where each split's states were while the run used them."""

    def __init__(self) -> None:
        self.spilled: dict[str, bool] = {}

    def on_test_end(self, trainer, pl_module) -> None:
        for split, cached in pl_module.cache.splits.items():
            self.spilled[split] = cached.path is not None and cached.path.is_file()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


lines = Lines()
logging.getLogger("gpt_classifier.training.trunk_cache").addHandler(lines)
logging.getLogger("gpt_classifier.training.trunk_cache").setLevel(logging.INFO)
L.seed_everything(7)
dm = TextClassificationDataModule(data_dir, ["a", "b"], max_length=256, eval_batch_size=64)
dm.setup()
module = GPTClassifier(
    MODEL,
    dm.class_names,
    finetune={"cache_frozen": True, "cache_budget_gb": None if budget == "auto" else float(budget)},
    data={"max_length": dm.max_length, "padding": dm.padding, "pad_token_id": dm.pad_token_id},
    optimizer=adamw(1e-3),
)
limit = None
if cgroup is not None:
    v2 = (cgroup / "memory.max").exists()
    usage_file, limit_file = (
        ("memory.current", "memory.max") if v2 else ("memory.usage_in_bytes", "memory.limit_in_bytes")
    )
    limit = int((cgroup / usage_file).read_text()) + int(sys.argv[6]) * 2**20
    (cgroup / limit_file).write_text(str(limit))
recorder = Recorder()
trainer = quiet_trainer(default_root_dir=root_dir, limit_train_batches=5, callbacks=[recorder])
trainer.fit(module, datamodule=dm)
trainer.test(module, datamodule=dm, verbose=False)
cache_dir = Path(root_dir) / "cache"
result = {
    "metrics": module.final_metrics,
    "spilled": recorder.spilled,
    "left_on_disk": sorted(map(str, cache_dir.iterdir())) if cache_dir.exists() else [],
    "log": lines.lines,
    "limit": limit,
}
Path(out_json).write_text(json.dumps(result))
