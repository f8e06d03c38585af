"""`train.py` and `gpt-classifier train|baseline`: Hydra composes `conf/train.yaml` with the overrides.

Only Hydra is imported at the top: `--help` and config errors answer without loading torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gpt_classifier.errors import GPTClassifierError

# A source checkout (an editable install): src/gpt_classifier/cli/train.py -> <checkout>/conf.
CHECKOUT_CONF = Path(__file__).resolve().parents[3] / "conf"


def find_conf_dir() -> Path:
    """The project's `conf/`: in the current folder, else the checkout this package was installed from."""
    for folder in (Path.cwd() / "conf", CHECKOUT_CONF):
        if (folder / "train.yaml").is_file():
            return folder
    raise GPTClassifierError(
        "no conf/train.yaml here or in the project checkout: run gpt-classifier train from the project "
        "folder (the one with conf/), or use python train.py there"
    )


def train_task(cfg: DictConfig) -> float | None:
    """Train (and test) one run; returns the validation accuracy an optimizing sweeper maximizes."""
    from gpt_classifier.training.sweeps import run_task
    from gpt_classifier.training.task import train

    metrics = run_task(train, cfg)
    return metrics.get("val_acc") if metrics else None


def baseline_task(cfg: DictConfig) -> None:
    """The bag-of-words baseline on the same split as training."""
    from gpt_classifier.training.baseline import baseline
    from gpt_classifier.training.sweeps import run_task

    run_task(baseline, cfg)


def run_hydra(task: Callable[[DictConfig], object], argv: Sequence[str], prog: str) -> int:
    """Run `task` under Hydra as if `prog argv...` were the command line (Hydra reads `sys.argv`)."""
    try:
        conf_dir = find_conf_dir()
    except GPTClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.argv = [prog, *argv]
    hydra.main(version_base="1.3", config_path=str(conf_dir), config_name="train")(task)()
    return 0


def train_main(argv: Sequence[str]) -> int:
    return run_hydra(train_task, argv, "gpt-classifier train")


def baseline_main(argv: Sequence[str]) -> int:
    return run_hydra(baseline_task, [*argv, "hydra.job.name=baseline"], "gpt-classifier baseline")
