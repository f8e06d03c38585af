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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from gpt_classifier.atomic_files import replace_atomically, temporary_path
from gpt_classifier.errors import GPTClassifierError


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a temporary file in the checkpoint's folder, then `os.replace` onto the target.

    Lightning's own `TorchCheckpointIO` buffers the whole checkpoint in memory and commits it through
    an fsspec transaction whose temporary file lives in the system temp folder, so the final move
    can be a non-atomic copy across filesystems. Remote paths (s3://, ...) still go through Lightning.
    A checkpoint of the same epoch and step as the one just written holds the same training state:
    it becomes a hard link to that file instead of a second copy of the model.

    `background=True` (`async_checkpoints=true`) takes a copy of the checkpoint's tensors and writes
    it in one background thread while training goes on: still atomic, and the writes, links and
    removals run in the order they were asked for, so a link never points at a file still being
    written and a removal never overtakes a write. (Lightning's `AsyncCheckpointIO` removes at once,
    before the writes queued ahead of it.) `teardown`, at the end of `fit`, waits for them, and an
    error in the background is raised at the next save or at `teardown`.
    """

    def __init__(self, *, background: bool = False) -> None:
        super().__init__()
        self.previous: tuple[tuple[int, int], str] | None = None  # (epoch, step) and file last saved
        self.background = background
        self.writer: ThreadPoolExecutor | None = None
        self.error: BaseException | None = None
        self.write_seconds = 0.0  # time spent writing files, in the background or not

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            self._in_order(super().save_checkpoint, checkpoint, path, storage_options)
            return
        target = os.fspath(path).removeprefix("file://")
        state = (checkpoint.get("epoch", -1), checkpoint.get("global_step", -1))
        if self.previous and self.previous[0] == state:
            kept = None if self.background else checkpoint  # the background writer has no copy to spare
            self._in_order(self._link_or_write, self.previous[1], target, kept)
        else:
            if self.background:  # a snapshot: training changes the parameters and optimizer state in place
                checkpoint = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())
            self._in_order(self._write, checkpoint, target)
        self.previous = (state, target)

    def remove_checkpoint(self, path: Any) -> None:
        self._in_order(super().remove_checkpoint, path)

    def teardown(self) -> None:
        """Wait for the background writes; raise the first error one of them met."""
        if self.writer is not None:
            self.writer.shutdown(wait=True)
            self.writer = None
        self._raise_error()

    def _in_order(self, work: Callable[..., None], *args: Any) -> None:
        """Run `work` now, or in the background writer after everything queued before it."""
        if not self.background:
            work(*args)
            return
        self._raise_error()
        if self.writer is None:
            self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self.writer.submit(self._catching, work, *args)

    def _catching(self, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except BaseException as error:  # raised again on the training thread
            self.error = self.error or error

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _write(self, checkpoint: dict[str, Any], target: str) -> None:
        started = time.perf_counter()
        replace_atomically(Path(target), lambda f: torch.save(checkpoint, f))
        self.write_seconds += time.perf_counter() - started

    def _link_or_write(self, source: str, target: str, checkpoint: dict[str, Any] | None) -> None:
        """`target` as a link to `source`, written at the same training step; or written anew if
        `source` is gone (the checkpoint is there then, unless this runs in the background)."""
        if os.path.isfile(source) or checkpoint is None:
            link_or_copy(source, target)
        else:
            self._write(checkpoint, target)


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


class ClearCacheOnFailure(L.Callback):
    """A failed fit or test removes the frozen-trunk cache's files at once (a finished one keeps
    them for the final evaluation; what is left goes when the process exits)."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if getattr(pl_module, "cache", None) is not None:
            pl_module.cache.clear()
