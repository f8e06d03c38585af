"""Checkpoint reading: a checkpoint loaded safely, and the classifier it holds.

Nothing here imports Lightning, so prediction, serving and export start fast. A checkpoint is
Lightning's dict: `hyper_parameters` (what `build_classifier` needs: model, class names, finetune,
classifier and data settings) and `state_dict` (the `GPTClassifier`'s, keys `classifier.*`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt_classifier.atomic_files import replace_atomically
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import TextClassifier, build_classifier
from gpt_classifier.model.finetune import merge_lora

STATE_PREFIX = "classifier."


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint, loaded safely (`weights_only=True`), or one clear error."""
    path = Path(path)
    if path.is_dir():
        raise GPTClassifierError(
            f"checkpoint {path} is a directory: pass the .ckpt file in it (e.g. last.ckpt)"
        )
    if not path.is_file():
        raise GPTClassifierError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise GPTClassifierError(
            f"checkpoint {path} is unreadable ({type(err).__name__}): it is corrupt, truncated or not a "
            "gpt-classifier checkpoint; use another one (e.g. checkpoints/last.ckpt)"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "hyper_parameters" not in checkpoint
        or "state_dict" not in checkpoint
    ):
        raise GPTClassifierError(
            f"checkpoint {path} has no model settings: it was not written by gpt-classifier"
        )
    return checkpoint


def classifier_settings(hparams: dict[str, Any]) -> dict[str, Any]:
    """The arguments of `build_classifier` from a checkpoint's `hyper_parameters`."""
    keys = ("model", "class_names", "finetune", "classifier", "data")
    return {key: hparams.get(key) for key in keys}


@contextlib.contextmanager
def skipped_normal_init() -> Iterator[None]:
    """`nn.init.normal_` as a no-op: on the meta device it would import torch._dynamo (~1 s of start-up)."""
    normal = nn.init.normal_
    nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        nn.init.normal_ = normal


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu", *, merge: bool = True
) -> TextClassifier:
    """The trained `TextClassifier` of a checkpoint, in eval mode, from the file alone (no Hub access).

    `merge=True` folds LoRA factors into plain weights: the same outputs, less work.
    """
    checkpoint = read_checkpoint(path, map_location)
    try:
        classifier = classifier_of(checkpoint, path)
    except GPTClassifierError:
        raise
    except Exception as err:  # settings of the wrong types, weights of the wrong shapes or names
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise GPTClassifierError(
            f"checkpoint {path} is damaged: its settings and weights do not make a model "
            f"({type(err).__name__}: {first_line[:200]}); use another checkpoint or train again"
        ) from None
    if merge:
        merge_lora(classifier.model)
    return classifier.to(map_location).eval()


def classifier_of(checkpoint: dict[str, Any], path: str | Path) -> TextClassifier:
    """The classifier its settings describe, holding its weights (built on the meta device first);
    `path` names the file in errors."""
    settings = classifier_settings(checkpoint["hyper_parameters"])
    settings["model"] = {**settings["model"], "weights": "random"}  # the checkpoint holds every weight
    with torch.device("meta"), skipped_normal_init():  # no time on weights that are replaced at once
        classifier = build_classifier(**settings)
    state = {k.removeprefix(STATE_PREFIX): v for k, v in checkpoint["state_dict"].items()}
    missing, unexpected = (
        sorted(classifier.state_dict().keys() - state),
        sorted(state - classifier.state_dict().keys()),
    )
    if missing or unexpected:
        raise GPTClassifierError(
            f"checkpoint {path} does not fit this version's model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): load it with the gpt-classifier version that wrote it, or train again"
        )
    classifier.load_state_dict(state, assign=True)
    classifier.set_decision(checkpoint.get("decision") or {})
    return classifier


def write_decision(path: str | Path, decision: dict[str, Any]) -> None:
    """Rewrite the checkpoint at `path` with its top-level `decision` replaced (atomically: a crash
    leaves the old file whole). A hard link to the old file (`last.ckpt`) keeps the old content."""
    checkpoint = read_checkpoint(path)
    checkpoint["decision"] = dict(decision)
    replace_atomically(Path(path), lambda f: torch.save(checkpoint, f))


def read_hyper_parameters(path: str | Path) -> dict[str, Any]:
    """A checkpoint's `hyper_parameters` (memory-mapped: the weights are not read)."""
    return dict(read_checkpoint(path)["hyper_parameters"])
