"""Hydra multiruns: running one job with one-line errors, DDP inside sweeps, the Optuna search space.

Lightning's DDP launcher starts ranks 1.. of a run as `python <script> <sys.argv[1:]>
hydra.run.dir=<hydra.run.dir>`. In a sweep that command line is the whole sweep (`-m` and every
value), and `hydra.run.dir` is not the job's folder; and after the first job the process keeps
its process group and `LOCAL_RANK`, so the next job would wait for ranks that never come.
`sweep_job` makes the extra processes re-run this job alone, in its folder, and leaves the process
as it found it for the next job. Outside sweeps, and where the cluster starts the processes
(SLURM with one task per GPU), it changes nothing that matters.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from gpt_classifier.atomic_files import write_text_atomic
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.training.reports import FAILED_FILE

log = logging.getLogger(__name__)

LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def sweep_job() -> Iterator[None]:
    """Around one job of a Hydra multirun: DDP's extra processes run this job's overrides only."""
    if not in_multirun():
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv = list(sys.argv)
    saved = {key: os.environ.get(key) for key in LAUNCH_VARIABLES}
    run_dir = hydra_cfg.run.dir
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg.run):
            hydra_cfg.run.dir = run_dir
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task with one-line errors; in a sweep, record a failed run and let the others go on."""
    multirun = in_multirun()
    try:
        with sweep_job():  # DDP's extra processes re-run this job alone
            return task(cfg)
    except GPTClassifierError as err:
        if multirun:
            log.error("run failed: %s", err)
            write_text_atomic(f"{err}\n", Path(HydraConfig.get().runtime.output_dir) / FAILED_FILE)
            return None
        log.error("%s", err)  # one line on the console and in the run's log file
        sys.exit(2)
    except Exception:
        if not multirun:
            raise
        log.exception("run failed")
        write_text_atomic(traceback.format_exc(), Path(HydraConfig.get().runtime.output_dir) / FAILED_FILE)
        return None


def lora_rank_space(cfg: DictConfig, trial: Any) -> None:
    """`finetune.lora_rank`, from `search.lora_ranks`, only in trials that use `finetune=lora`.

    Other policies have no rank: searching it there would only repeat their trials. `finetune` is
    a searched parameter, or a fixed one when given on the command line (`finetune=lora`).
    """
    finetune = trial.params.get("finetune", trial.user_attrs.get("finetune"))
    if finetune == "lora":
        trial.suggest_categorical("finetune.lora_rank", list(cfg.search.lora_ranks))
