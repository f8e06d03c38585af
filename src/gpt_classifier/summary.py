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


def run_overrides(job_dir: Path) -> list[str]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    return (yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else []


def run_row(job_dir: Path, common: set[str]) -> dict[str, Any]:
    """The overrides that set this run apart, its status and its metrics."""
    overrides = [o for o in run_overrides(job_dir) if o not in common]
    row: dict[str, Any] = {"run": job_dir.name, "overrides": " ".join(overrides)}
    config_file = job_dir / ".hydra" / "config.yaml"
    book = (yaml.safe_load(config_file.read_text()) or {}).get("book") if config_file.is_file() else None
    if book:  # an experiment preset from the book's table: its published figures beside ours
        row["book_row"] = book["row"]
        row["book train / val / test %"] = (
            f"{book['train_acc']:.2f} / {book['val_acc']:.2f} / {book['test_acc']:.2f}"
        )
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
    if not jobs:
        return pd.DataFrame()
    common = set.intersection(*(set(run_overrides(p)) for p in jobs))
    table = pd.DataFrame([run_row(p, common) for p in jobs])
    for column in [*METRIC_COLUMNS, "error"]:
        if column not in table:
            table[column] = None
    table["_ok"] = table["status"] == "ok"
    table = table.sort_values(["_ok", "val_acc", "test_acc"], ascending=False, na_position="last")
    table = table.drop(columns="_ok").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table.insert(1, "best", ["best" if i == 0 and ok else "" for i, ok in enumerate(table["status"] == "ok")])
    table.to_csv(sweep_dir / "summary.csv", index=False)
    header = f"Sweep {sweep_dir}; every run: {' '.join(sorted(common)) or '(no shared overrides)'}\n\n"
    header += best_line(table, sweep_dir)
    body = display(table).to_markdown(index=False)
    (sweep_dir / "summary.md").write_text(header + body + "\n")
    return table


def best_line(table: pd.DataFrame, sweep_dir: Path) -> str:
    """The best run by validation accuracy, and Optuna's own verdict when an Optuna search wrote one."""
    if table.empty or table.loc[0, "status"] != "ok":
        return ""
    best = table.iloc[0]
    overrides = best["overrides"] or "no overrides"
    line = f"Best: run {best['run']} ({overrides}), val_acc {100 * best['val_acc']:.2f}%"
    optuna_file = sweep_dir / "optimization_results.yaml"
    results = yaml.safe_load(optuna_file.read_text()) if optuna_file.is_file() else None
    if isinstance(results, dict) and "best_value" in results:
        params = " ".join(f"{k}={v}" for k, v in (results.get("best_params") or {}).items())
        line += f"; Optuna's best trial: {params}, value {results['best_value']}"
    return line + "\n\n"


def display(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracies in percent as the book prints them, losses to 4 places, blanks for missing values."""
    shown = table.copy()
    formats = {"acc": "{:.2f}".format, "loss": "{:.4f}".format, "examples_seen": "{:.0f}".format}
    formats["train_seconds"] = "{:.1f}".format
    for column in METRIC_COLUMNS:
        kind = column.rsplit("_", 1)[-1] if column.endswith(("acc", "loss")) else column
        scale = 100 if kind == "acc" else 1
        shown[column] = [formats[kind](v * scale) if pd.notna(v) else "" for v in table[column]]
    shown["error"] = shown["error"].fillna("")
    return shown.rename(columns={c: f"{c} %" for c in METRIC_COLUMNS if c.endswith("acc")})


class SweepSummary(Callback):
    """Hydra callback: summarises the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            table = summarize(sweep_dir)
            log.info("sweep summary (%d runs): %s", len(table), sweep_dir / "summary.md")
