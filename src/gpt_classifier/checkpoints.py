"""Checkpoints that survive crashes: atomic writes, a resumable "best", and a clear error on a mismatch.

- `AtomicCheckpointIO` writes each checkpoint to a temporary file beside the target and renames it
  into place, so a run killed mid-write never leaves a truncated `.ckpt` (and the previous
  `last.ckpt` stays intact until the new one is complete).
- `ResumableModelCheckpoint` keeps the best checkpoint across a resume into a new run folder, writes
  `last.ckpt` after every validation, and hard-links it to the best one when both hold the same step.
- `check_resume` compares a checkpoint's settings with the run about to load it, before Lightning
  fails deep inside `load_state_dict` with a long size-mismatch error.
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
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.files import replace_atomically, temporary_path
from gpt_classifier.module import read_checkpoint

ARCHITECTURE_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a temporary file in the checkpoint's folder, then `os.replace` onto the target.

    Lightning's own `TorchCheckpointIO` buffers the whole checkpoint in memory and commits it through
    an fsspec transaction whose temporary file lives in the system temp folder, so the final move
    can be a non-atomic copy across filesystems. Remote paths (s3://, ...) still go through Lightning.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        replace_atomically(Path(os.fspath(path).removeprefix("file://")), lambda f: torch.save(checkpoint, f))


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


class ResumableModelCheckpoint(ModelCheckpoint):
    """A `ModelCheckpoint` that keeps the best checkpoints when a run resumes into a new folder, keeps
    `last.ckpt` the latest state, and writes the model once per step.

    Lightning restores `best_model_score` and `best_k_models` only if the checkpoint folder is the
    same, so "best" after a resume would only consider the resumed epochs. Here the earlier best
    files are linked (or copied) into the new folder with their scores, so the new run is complete
    on its own and its best is the best over all epochs, as in an uninterrupted run.
    """

    fitting = True  # `trainer.test(ckpt_path=...)` restores callback states too, to no purpose

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.fitting = stage == "fit"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        """Since Lightning 2.6, `last.ckpt` is written only along with a best checkpoint, so a run resumed
        from it after an epoch without improvement would repeat epochs: write it at every save point."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """`last.ckpt` right after this step's best checkpoint holds the same training state: hard-link
        that file rather than write the whole model (0.5 GB for GPT-2 small) a second time."""
        source = self._last_checkpoint_saved
        same_state = (
            filepath == self.last_model_path
            and source not in ("", filepath)
            and self._last_global_step_saved == trainer.global_step
            and isinstance(self._fs, LocalFileSystem)
        )
        if not same_state:
            super()._save_checkpoint(trainer, filepath)
            return
        if trainer.is_global_zero:
            link_or_copy(source, filepath)
        trainer.strategy.barrier("link_last_checkpoint")
        self._last_checkpoint_saved = filepath

    def _generate_state_key(self, **kwargs: Any) -> str:
        """Lightning's own key, so checkpoints of a plain `ModelCheckpoint` resume with ours and back."""
        return f"{ModelCheckpoint.__qualname__}{kwargs!r}"

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


def read_hyper_parameters(path: str | Path) -> dict[str, Any]:
    """A checkpoint's `hyper_parameters`, memory-mapped so the weights are not read.

    Anything `torch.load` cannot map (a truncated, corrupt or foreign file) goes through
    `read_checkpoint`, which either reads it after all or raises its one-line error.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return dict(checkpoint["hyper_parameters"])
    except Exception:
        return dict(read_checkpoint(path)["hyper_parameters"])


def _architecture(hparams: dict[str, Any]) -> dict[str, Any]:
    model = hparams.get("model") or {}
    return {key: model.get(key) for key in ARCHITECTURE_KEYS}


def _policy(hparams: dict[str, Any]) -> str:
    """The finetune settings that decide which parameters exist and which the optimizer holds."""
    finetune = hparams.get("finetune") or {}
    policy = finetune.get("policy")
    extra = {"lora": "lora_rank", "last_n_blocks": "last_n_blocks"}.get(policy)
    return f"finetune={policy}" + (f" finetune.{extra}={finetune.get(extra)}" if extra else "")


def check_resume(path: str | Path, run_hparams: dict[str, Any]) -> None:
    """Fail in one line if the checkpoint at `path` cannot resume a run with `run_hparams`.

    Compares what decides the parameters and the optimizer's state: the model architecture, the
    class names and the finetune policy. Anything else (learning rate, epochs, ...) may change.
    """
    ckpt = read_hyper_parameters(path)
    theirs: list[str] = []  # what differs, on the checkpoint's side
    ours: list[str] = []  # ... and on this run's
    overrides: list[str] = []  # the command-line overrides that match the checkpoint
    arch_c, arch_r = _architecture(ckpt), _architecture(run_hparams)
    changed = [key for key in ARCHITECTURE_KEYS if arch_c[key] != arch_r[key]]
    if changed:
        name_c, name_r = ((hp.get("model") or {}).get("name", "a model") for hp in (ckpt, run_hparams))
        theirs.append(f"{name_c} ({', '.join(f'{k} {arch_c[k]}' for k in changed)})")
        ours.append(f"{name_r} ({', '.join(f'{k} {arch_r[k]}' for k in changed)})")
        overrides += [f"model={name_c}"] if name_c != name_r else [f"model.{k}={arch_c[k]}" for k in changed]
    policy_c, policy_r = _policy(ckpt), _policy(run_hparams)
    if policy_c != policy_r:
        theirs.append(policy_c)
        ours.append(policy_r)
        overrides.append(policy_c)
    fix = " ".join(overrides)
    names_c, names_r = list(ckpt.get("class_names") or []), list(run_hparams.get("class_names") or [])
    if names_c != names_r:
        theirs.append(f"{len(names_c)} classes ({', '.join(map(str, names_c))})")
        ours.append(f"{len(names_r)} classes ({', '.join(map(str, names_r))})")
        fix = " and ".join(filter(None, [fix, f"data with the classes {names_c}"]))
    if theirs:
        raise GPTClassifierError(
            f"checkpoint {path} was trained with {' and '.join(theirs)}; this run builds "
            f"{' and '.join(ours)}: pass the matching {fix}, or another checkpoint"
        )
