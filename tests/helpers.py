"""Shared by the training-application tests: the tiny model, in-process Hydra configs, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TRAIN_PY = ROOT / "train.py"
PREDICT_PY = ROOT / "predict.py"

# `model=gpt2-tiny` as a dict, for building a GPTClassifier without Hydra.
TINY_MODEL = {
    "name": "gpt2-tiny",
    "weights": "random",
    "vocab_size": 50257,
    "context_length": 256,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
    "causal": True,
}
# Command-line overrides for a quick run of the tiny model.
TINY_OVERRIDES = ["model=gpt2-tiny", "model.weights=random", "callbacks.progress_bar.refresh_rate=0"]


def adamw(lr: float = 1e-3):
    return partial(torch.optim.AdamW, lr=lr, weight_decay=0.1)


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary."""
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**{**options, **kwargs})


@contextmanager
def train_config(overrides: Sequence[str], output_dir: Path) -> Iterator[DictConfig]:
    """`conf/train.yaml` composed with `overrides`, as `train.py` would see it, writing to `output_dir`.

    `HydraConfig` is set so that `${hydra:...}` interpolations resolve, then cleared again. Like
    Hydra, this creates the output folder.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*overrides, f"paths.output_dir={output_dir}"],
            return_hydra_config=True,
        )
        HydraConfig().set_config(cfg)
        try:
            yield cfg
        finally:
            HydraConfig.instance().cfg = None


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        command = " ".join(self.args)
        return f"{command}\nexit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONWARNINGS"] = "ignore"
    env["OMP_NUM_THREADS"] = "1"  # several runs share the cores: no busy-waiting thread pools
    return env


def start_cli(script: Path, args: Sequence[str], cwd: Path) -> tuple[list[str], subprocess.Popen]:
    """Start `python script args...` in `cwd` (not the repository: paths must not depend on it)."""
    command = [sys.executable, str(script), *args]
    proc = subprocess.Popen(
        command, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return command, proc


def finish_cli(started: tuple[list[str], subprocess.Popen], timeout: float = 240) -> CliResult:
    command, proc = started
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    return CliResult(command, proc.returncode, stdout, stderr)


def run_cli(script: Path, args: Sequence[str], cwd: Path, timeout: float = 240) -> CliResult:
    return finish_cli(start_cli(script, args, cwd), timeout)


def run_many(jobs: dict[str, tuple[Path, Sequence[str], Path]], timeout: float = 300) -> dict[str, CliResult]:
    """Run several CLI commands at once (each is mostly import time) and wait for all of them."""
    started = {name: start_cli(*job) for name, job in jobs.items()}
    return {name: finish_cli(s, timeout) for name, s in started.items()}


def write_random_checkpoint(path: Path, class_names: Sequence[str], max_length: int = 32) -> Path:
    """A checkpoint of the tiny model with seeded random weights, as `load_classifier` reads it: for
    tests of prediction plumbing, in a fraction of a second (no training)."""
    from gpt_classifier.model.classifier import build_classifier

    torch.manual_seed(0)
    settings = {
        "model": TINY_MODEL,
        "class_names": list(class_names),
        "finetune": {"policy": "last_block"},
        "classifier": {"position": "last"},
        "data": {"max_length": max_length, "padding": "max_length"},
    }
    classifier = build_classifier(**settings)
    state = {f"classifier.{name}": value for name, value in classifier.state_dict().items()}
    torch.save({"hyper_parameters": settings, "state_dict": state}, path)
    return path
