"""Lightning glue for checkpoints that survive crashes, through Lightning's public API only.

- `AtomicCheckpointIO` writes each checkpoint to a temporary file beside the target and renames it
  into place, so a run killed mid-write never leaves a truncated `.ckpt`; a second save of the same
  training step (the best checkpoint, then `last.ckpt`) is a hard link, so the model is written once.
- `BestCheckpoint` keeps the best checkpoint across a resume into a new run folder.
- `last.ckpt` after every epoch is a second, plain `ModelCheckpoint` (conf/callbacks/default.yaml):
  since Lightning 2.6, `save_last=True` writes it only along with a new best.
- `early_stopping` makes Lightning's `EarlyStopping` only when a patience is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.files import replace_atomically, temporary_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a temporary file in the checkpoint's folder, then `os.replace` onto the target.

    Lightning's own `TorchCheckpointIO` buffers the whole checkpoint in memory and commits it through
    an fsspec transaction whose temporary file lives in the system temp folder, so the final move
    can be a non-atomic copy across filesystems. Remote paths (s3://, ...) still go through Lightning.
    A checkpoint of the same epoch and step as the one just written holds the same training state:
    it becomes a hard link to that file instead of a second copy of the model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.previous: tuple[tuple[int, int], str] | None = None  # (epoch, step) and file last written

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = os.fspath(path).removeprefix("file://")
        state = (checkpoint.get("epoch", -1), checkpoint.get("global_step", -1))
        if self.previous and self.previous[0] == state and os.path.isfile(self.previous[1]):
            link_or_copy(self.previous[1], target)
        else:
            replace_atomically(Path(target), lambda f: torch.save(checkpoint, f))
        self.previous = (state, target)


def _copy_into(source: str, target: BinaryIO) -> None:
    with open(source, "rb") as f:
        shutil.copyfileobj(f, target)


def link_or_copy(source: str, target: str) -> None:
    """Hard-link `source` to `target` (no copy: checkpoints are replaced, never changed in place), or
    copy it where links are impossible (another filesystem); atomically either way."""
    tmp = temporary_path(Path(target))
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, tmp)
        os.replace(tmp, target)  # does nothing if `target` is already a link to `source`
    except OSError:
        replace_atomically(target, partial(_copy_into, source))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def early_stopping(
    patience: int | None, monitor: str = "val/loss", min_delta: float = 0.0
) -> EarlyStopping | None:
    """Lightning's `EarlyStopping` on `monitor` (losses fall, anything else rises), or None: no patience."""
    if patience is None:
        return None
    if patience < 1:
        raise GPTClassifierError(f"callbacks.early_stopping.patience={patience} must be at least 1 (or null)")
    mode = "min" if monitor.endswith("loss") else "max"
    return EarlyStopping(monitor=monitor, patience=patience, mode=mode, min_delta=min_delta, verbose=True)


class BestCheckpoint(ModelCheckpoint):
    """A `ModelCheckpoint` that keeps the best checkpoints when a run resumes into a new folder.

    Lightning restores `best_model_score` and `best_k_models` only if the checkpoint folder is the
    same, so "best" after a resume would only consider the resumed epochs. Here the earlier best
    files are linked (or copied) into the new folder with their scores, so the new run is complete
    on its own and its best is the best over all epochs, as in an uninterrupted run.
    """

    fitting = True  # `trainer.test(ckpt_path=...)` restores callback states too, to no purpose

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.fitting = stage == "fit"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.fitting:
            return
        moved = state_dict.get("dirpath", self.dirpath) != self.dirpath and self.dirpath is not None
        if not moved or state_dict.get("monitor") != self.monitor:
            super().load_state_dict(state_dict)
            return
        self.best_k_models = {}
        for old, score in state_dict.get("best_k_models", {}).items():
            if Path(old).is_file():  # a best file deleted since is forgotten
                new = os.path.join(self.dirpath, Path(old).name)
                link_or_copy(old, new)
                self.best_k_models[new] = score
        if not self.best_k_models:
            return
        pick = min if self.mode == "min" else max
        self.best_model_path = pick(self.best_k_models, key=self.best_k_models.get)  # type: ignore[arg-type]
        self.best_model_score = self.best_k_models[self.best_model_path]
        if len(self.best_k_models) == self.save_top_k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.get)  # type: ignore[arg-type]
            self.kth_value = self.best_k_models[self.kth_best_model_path]
