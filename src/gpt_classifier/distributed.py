"""Multi-process training (DDP, FSDP) inside Hydra sweeps.

Lightning's DDP launcher starts ranks 1.. of a run as `python <script> <sys.argv[1:]>
hydra.run.dir=<hydra.run.dir>`. In a sweep that command line is the whole sweep (`-m` and every
value), and `hydra.run.dir` is not the job's folder; and after the first job the process keeps
its process group and `LOCAL_RANK`, so the next job would wait for ranks that never come.
`sweep_job` makes the extra processes re-run this job alone, in its folder, and leaves the process
as it found it for the next job. Outside sweeps, and where the cluster starts the processes
(SLURM with one task per GPU), it changes nothing that matters.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def sweep_job() -> Iterator[None]:
    """Around one job of a Hydra multirun: DDP's extra processes run this job's overrides only."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
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
