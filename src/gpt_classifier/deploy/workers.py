"""Several server processes on one port (`serve.py --workers N`): the app factory each one runs.

uvicorn's supervisor starts N processes that share the listening socket; a spawned process gets no
Python objects from its parent, so each builds its app with `app_from_env` from the settings the
parent wrote to an environment variable, and loads its own model with its share of the cores.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from gpt_classifier.cpu_threads import usable_cpus
from gpt_classifier.deploy.guard import Security
from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.deploy.server import Limits, create_app

SETTINGS_VARIABLE = "GPT_CLASSIFIER_SERVE_SETTINGS"


@dataclass
class WorkerSettings:
    """What a worker process needs to build the app: the model, its device and threads, the limits and
    who may ask."""

    checkpoint: str
    device: str = "auto"
    threads: int | None = None
    limits: dict[str, Any] = field(default_factory=lambda: asdict(Limits()))
    security: dict[str, Any] = field(default_factory=lambda: asdict(Security()))
    access_log: bool = True

    def to_environment(self) -> None:
        """Pass the settings to the worker processes, which inherit this process's environment."""
        os.environ[SETTINGS_VARIABLE] = json.dumps(asdict(self))


def threads_per_worker(workers: int) -> int:
    """The CPUs this process may use (affinity, cgroup quota) split evenly, at least one each."""
    return max(1, usable_cpus() // workers)


def app_from_env() -> FastAPI:
    """uvicorn's app factory (`factory=True`) in each worker: the model loaded from the settings."""
    settings = WorkerSettings(**json.loads(os.environ[SETTINGS_VARIABLE]))
    predictor = load_predictor(settings.checkpoint, settings.device, settings.threads)
    return create_app(
        predictor,
        Limits(**settings.limits),
        Security(**settings.security),
        checkpoint=Path(settings.checkpoint).name,
        access_log=settings.access_log,
    )
