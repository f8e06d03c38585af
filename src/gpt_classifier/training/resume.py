"""Resuming a run: does a checkpoint fit the run that wants to continue from it, and the random
state it continues from. (No Lightning.)"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import read_hyper_parameters
from gpt_classifier.model.gpt import GPTConfig

# What decides the parameters' shapes (dropout and the causal mask do not).
RUNTIME_KEYS = ("drop_rate", "causal", "out_dim")
ARCHITECTURE_KEYS = tuple(f.name for f in fields(GPTConfig) if f.name not in RUNTIME_KEYS)


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


def rng_states() -> dict[str, Any]:
    """torch's CPU and CUDA random states: what dropout draws from."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
