"""Reports: the book's loss and accuracy figures, the per-class report, confusion matrix, PR and ROC
curves, sweep tables.

matplotlib is imported by the functions that draw, so importing this module costs nothing at start-up.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from torch import Tensor

from gpt_classifier.atomic_files import replace_atomically, write_text_atomic

log = logging.getLogger(__name__)


def per_class_report(confusion: Tensor, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (rows: true class)."""
    confusion = confusion.double()
    hits, predicted, actual = confusion.diag(), confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, hits / actual.clamp(min=1), 0.0)
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0
    )
    return {
        name: {"precision": p, "recall": r, "f1": f, "support": int(n)}
        for name, p, r, f, n in zip(
            class_names, precision.tolist(), recall.tolist(), f1.tolist(), actual.tolist(), strict=True
        )
    }


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict], out_dir: Path) -> list[Path]:
    """Write `loss.png` and `accuracy.png` from per-epoch rows; returns the files written."""
    if not history:
        return []
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    seen = [row["examples_seen"] for row in history]
    written = []
    for key, label, name in (("loss", "Loss", "loss.png"), ("acc", "Accuracy", "accuracy.png")):
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(epochs, [row[f"train_{key}"] for row in history], marker="o", label=f"Training {key}")
        ax.plot(
            epochs,
            [row[f"val_{key}"] for row in history],
            marker="o",
            linestyle="-.",
            label=f"Validation {key}",
        )
        ax.set_xlabel("Epochs")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.legend()
        top = ax.twiny()  # a second x-axis in examples seen, aligned with the epochs
        top.plot(seen, [row[f"train_{key}"] for row in history], alpha=0)
        top.set_xlabel("Examples seen")
        fig.tight_layout()
        written.append(save_atomic(fig, out_dir / name))
        plt.close(fig)
    return written


def save_atomic(fig: Any, path: Path) -> Path:
    """Save a figure under a temporary name first, so a crash never leaves half an image."""
    replace_atomically(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".")))
    return path


def plot_confusion(confusion: Any, class_names: list[str], out_dir: Path) -> tuple[Path, Any]:
    """Write `confusion_matrix.png` from a torchmetrics confusion matrix.

    Returns the file and the open figure (for TensorBoard); release it with `close`.
    """
    pyplot()
    fig, ax = confusion.plot(labels=class_names)
    ax.set_title("Test split (best checkpoint)")
    return save_atomic(fig, out_dir / "confusion_matrix.png"), fig


def plot_curves(
    probs: Tensor, labels: Tensor, class_names: list[str], positive_class: int, out_dir: Path
) -> list[Path]:
    """Write `pr_curve.png` and `roc_curve.png` of the test split: for two classes the positive class's
    curves, for more one curve per class (one-vs-rest)."""
    from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

    plt = pyplot()
    shown = [positive_class] if len(class_names) == 2 else range(len(class_names))
    written = []
    for name, curve, axes in (
        ("pr_curve.png", binary_precision_recall_curve, ("Recall", "Precision")),
        ("roc_curve.png", binary_roc, ("False positive rate", "True positive rate")),
    ):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        for index in shown:
            first, second, _ = curve(probs[:, index].float(), (labels == index).long())
            x, y = (second, first) if curve is binary_precision_recall_curve else (first, second)
            ax.plot(x.tolist(), y.tolist(), label=str(class_names[index]))
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        ax.set_title("Test split (best checkpoint)")
        ax.legend(title="positive class" if len(class_names) == 2 else "class vs rest")
        fig.tight_layout()
        written.append(save_atomic(fig, out_dir / name))
        plt.close(fig)
    return written


def close(fig: Any) -> None:
    pyplot().close(fig)


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
    write_text_atomic(table.to_csv(index=False), sweep_dir / "summary.csv")
    header = f"Sweep {sweep_dir}; every run: {' '.join(sorted(common)) or '(no shared overrides)'}\n\n"
    header += best_line(table, sweep_dir)
    body = display(table).to_markdown(index=False)
    write_text_atomic(header + body + "\n", sweep_dir / "summary.md")
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
