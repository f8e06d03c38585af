"""Figures: loss and accuracy curves like the book's (per epoch, examples seen on top), confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from gpt_classifier.files import replace_atomically


def plot_history(history: list[dict], out_dir: Path) -> list[Path]:
    """Write `loss.png` and `accuracy.png` from per-epoch rows; returns the files written."""
    if not history:
        return []
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
    fig, ax = confusion.plot(labels=class_names)
    ax.set_title("Test split (best checkpoint)")
    return save_atomic(fig, out_dir / "confusion_matrix.png"), fig


def close(fig: Any) -> None:
    plt.close(fig)
