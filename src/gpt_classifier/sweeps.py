"""Optuna search space beyond what the sweeper's `params` strings say (conf/hparams_search/optuna.yaml)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def lora_rank_space(cfg: DictConfig, trial: Any) -> None:
    """`finetune.lora_rank`, from `search.lora_ranks`, only in trials that use `finetune=lora`.

    Other policies have no rank: searching it there would only repeat their trials. `finetune` is
    a searched parameter, or a fixed one when given on the command line (`finetune=lora`).
    """
    finetune = trial.params.get("finetune", trial.user_attrs.get("finetune"))
    if finetune == "lora":
        trial.suggest_categorical("finetune.lora_rank", list(cfg.search.lora_ranks))
