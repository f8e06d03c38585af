"""`PhaseTimer`: where a run's seconds go, measured by the run itself.

Every second from the process's start to `finish` belongs to exactly one phase: start-up (Python,
imports, data, model, the sanity check's bookkeeping), the frozen-trunk cache pass, training steps,
validation, checkpoints (writing them after an epoch, and reading the best one back for the final
evaluation), the final evaluation and the reports. Lightning's public hooks mark the boundaries; the
cache pass, which runs inside the first step of each split, is taken from the `TrunkCache`'s own
clock and subtracted from the phase it ran in. Both wall-clock and CPU seconds (this process, all
threads) are kept: on a shared machine the CPU seconds are the steadier measure. Enable it with
`+callbacks.phase_timer._target_=gpt_classifier.training.phases.PhaseTimer`; it writes `phases.json` into
the run folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from gpt_classifier.atomic_files import write_json_atomic

PHASES = ("startup", "cache", "training", "validation", "checkpoints", "final_evaluation", "reports")


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc, 10 ms resolution; elsewhere 0)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time
    except (OSError, ValueError, IndexError):
        return 0.0


class PhaseTimer(L.Callback):
    """Adds up wall-clock and CPU seconds per phase (`PHASES`) and writes them to `phases.json`."""

    def __init__(self, filename: str = "phases.json") -> None:
        self.filename = filename
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.phase: str | None = "startup"
        self.started = time.perf_counter() - process_age()
        self.mark = (self.started, 0.0)  # (wall, CPU) when the current phase began: CPU counts from 0
        self.cache_seen = (0.0, 0.0)
        self.first_batch: float | None = None
        self.folder: Path | None = None
        self.background_writes: float | None = None

    def _switch(self, phase: str | None, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the current phase now, less the cache pass that ran inside it, and start `phase`."""
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # kernels queued in this phase finish in it
        now = (time.perf_counter(), time.process_time())
        cache = getattr(pl_module, "cache", None)
        seen = (cache.build_seconds, cache.build_cpu_seconds) if cache is not None else self.cache_seen
        for i, clock in enumerate((self.wall, self.cpu)):
            in_cache = seen[i] - self.cache_seen[i]
            if self.phase is not None:
                clock[self.phase] += now[i] - self.mark[i] - in_cache
            clock["cache"] += in_cache
        self.phase, self.mark, self.cache_seen = phase, now, seen
        written = getattr(trainer.strategy.checkpoint_io, "write_seconds", None)
        if written is not None:
            self.background_writes = written

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.folder = Path(trainer.default_root_dir)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.first_batch is None:
            self._switch("training", trainer, pl_module)
            self.first_batch = self.mark[0] - self.started

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch("training", trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch("validation", trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Checkpoint callbacks run after every other callback, so their writes fall in "checkpoints".
        self._switch("startup" if trainer.sanity_checking else "checkpoints", trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch("checkpoints", trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch("checkpoints", trainer, pl_module)  # waiting for writes, reading the best back

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch("final_evaluation", trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch("reports", trainer, pl_module)

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """End the last phase and write `phases.json` (rank zero): call it when the run's work is done."""
        self._switch(None, trainer, pl_module)
        result: dict[str, Any] = {
            "wall": {k: round(v, 3) for k, v in self.wall.items()},
            "cpu": {k: round(v, 3) for k, v in self.cpu.items()},
            "total_wall": round(self.mark[0] - self.started, 3),
            "total_cpu": round(self.mark[1], 3),
            "to_first_batch": None if self.first_batch is None else round(self.first_batch, 3),
        }
        if self.background_writes is not None:  # wall seconds the checkpoint writer spent writing
            result["checkpoint_writes_in_background"] = round(self.background_writes, 3)
        if self.folder is not None and trainer.is_global_zero:
            write_json_atomic(result, self.folder / self.filename)
        return result
