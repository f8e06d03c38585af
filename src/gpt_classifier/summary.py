"""Sweep summaries: one row per run of a Hydra multirun, best validation accuracy first."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "train_acc",
    "val_acc",
    "test_acc",
    "train_loss",
    "val_loss",
    "test_loss",
    "examples_seen",
    "train_seconds",
]
FAILED_FILE = "failed.txt"


def run_row(job_dir: Path) -> dict[str, Any]:
    """Overrides, status and metrics of one run folder."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    row: dict[str, Any] = {"run": job_dir.name, "overrides": " ".join(overrides or [])}
    metrics_file, failed_file = job_dir / "metrics.json", job_dir / FAILED_FILE
    if metrics_file.is_file():
        row["status"] = "ok"
        row.update(json.loads(metrics_file.read_text()))
    elif failed_file.is_file():
        row["status"] = "failed"
        row["error"] = failed_file.read_text().strip().splitlines()[-1]
    else:
        row["status"] = "incomplete"
    return row


def summarize(sweep_dir: Path) -> pd.DataFrame:
    """Write `summary.csv` and `summary.md` in `sweep_dir`; finished runs by val_acc, then the rest."""
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: p.name)
    table = pd.DataFrame([run_row(p) for p in jobs])
    if table.empty:
        return table
    for column in [*METRIC_COLUMNS, "error"]:
        if column not in table:
            table[column] = None
    table["_ok"] = table["status"] == "ok"
    table = table.sort_values(["_ok", "val_acc", "test_acc"], ascending=False, na_position="last")
    table = table.drop(columns="_ok").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table.to_csv(sweep_dir / "summary.csv", index=False)
    (sweep_dir / "summary.md").write_text(table.to_markdown(index=False, floatfmt=".4f") + "\n")
    return table


class SweepSummary(Callback):
    """Hydra callback: summarises the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            table = summarize(sweep_dir)
            log.info("sweep summary (%d runs): %s", len(table), sweep_dir / "summary.md")
