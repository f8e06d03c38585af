"""All checkpoint reading: a checkpoint loaded safely, the classifier it holds, and resume checks.

Nothing here imports Lightning, so prediction, serving and export start fast. A checkpoint is
Lightning's dict: `hyper_parameters` (what `build_classifier` needs: model, class names, finetune,
classifier and data settings) and `state_dict` (the `GPTClassifier`'s, keys `classifier.*`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt_classifier.classifier import TextClassifier, build_classifier
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.files import replace_atomically
from gpt_classifier.finetune import merge_lora
from gpt_classifier.model import GPTConfig

# What decides the parameters' shapes (dropout and the causal mask do not).
RUNTIME_KEYS = ("drop_rate", "causal", "out_dim")
ARCHITECTURE_KEYS = tuple(f.name for f in fields(GPTConfig) if f.name not in RUNTIME_KEYS)
STATE_PREFIX = "classifier."


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint, loaded safely (`weights_only=True`), or one clear error."""
    path = Path(path)
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
    settings = classifier_settings(checkpoint["hyper_parameters"])
    settings["model"] = {**settings["model"], "weights": "random"}  # the checkpoint holds every weight
    with torch.device("meta"), skipped_normal_init():  # no time on weights that are replaced at once
        classifier = build_classifier(**settings)
    state = {k.removeprefix(STATE_PREFIX): v for k, v in checkpoint["state_dict"].items()}
    classifier.load_state_dict(state, assign=True)
    classifier.set_decision(checkpoint.get("decision") or {})
    if merge:
        merge_lora(classifier.model)
    return classifier.to(map_location).eval()


def write_decision(path: str | Path, decision: dict[str, Any]) -> None:
    """Rewrite the checkpoint at `path` with its top-level `decision` replaced (atomically: a crash
    leaves the old file whole). A hard link to the old file (`last.ckpt`) keeps the old content."""
    checkpoint = read_checkpoint(path)
    checkpoint["decision"] = dict(decision)
    replace_atomically(Path(path), lambda f: torch.save(checkpoint, f))


def read_hyper_parameters(path: str | Path) -> dict[str, Any]:
    """A checkpoint's `hyper_parameters` (memory-mapped: the weights are not read)."""
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
