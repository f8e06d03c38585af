"""Loss and accuracy curves drawn like the book's figures: per epoch, with examples seen on top."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


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
        ax.set_ylabel(label)
        ax.legend()
        top = ax.twiny()  # a second x-axis in examples seen, aligned with the epochs
        top.plot(seen, [row[f"train_{key}"] for row in history], alpha=0)
        top.set_xlabel("Examples seen")
        fig.tight_layout()
        path = out_dir / name
        tmp = out_dir / f".{name}.part.png"
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)
    return written
