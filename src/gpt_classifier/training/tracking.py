"""Experiment tracking beyond TensorBoard and CSV: MLflow, through Lightning's `MLFlowLogger`.

MLflow is an optional extra (`pip install -e ".[mlflow]"`, the light `mlflow-skinny` client). Each
run (each trial of a sweep: every job makes its own logger) is one MLflow run, named after its
output folder, with the run's hyperparameters, every logged metric and, at the end, the run
folder's metrics, report and figures as artifacts.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger

from gpt_classifier.errors import GPTClassifierError


def is_file_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith("file:") or "://" not in tracking_uri


def mlflow_logger(
    tracking_uri: str, output_dir: str, experiment_name: str = "gpt-classifier", run_name: str | None = None
) -> MLFlowLogger:
    """An `MLFlowLogger` writing to `tracking_uri` (a local folder, `sqlite:///...`, or a server's URL).

    MLflow 3 keeps its folder store (`./mlruns`) in maintenance mode and refuses it unless
    `MLFLOW_ALLOW_FILE_STORE` is true: a folder URI sets it (unless you set it yourself).
    """
    if importlib.util.find_spec("mlflow") is None:
        raise GPTClassifierError(
            "logger=mlflow needs MLflow: pip install -e '.[mlflow]' (or pip install mlflow-skinny)"
        )
    if is_file_store(tracking_uri):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    folder = Path(output_dir)
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name or f"{folder.parent.name}/{folder.name}",
        tracking_uri=tracking_uri,
        tags={"output_dir": str(folder)},
    )


def log_artifacts(loggers: Iterable[Logger], files: Iterable[Path]) -> None:
    """Attach the run folder's result files to each MLflow run."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            for path in files:
                if path.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(path))
