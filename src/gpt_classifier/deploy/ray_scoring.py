"""Score a Ray Dataset: `BatchScorer` on an actor pool, one model load per actor.

Each actor is a long-lived worker process that builds one `BatchScorer` (loading the model once
from `model_path`, a path every node can read) and maps pandas batches through `score_frame`.
Needs the `ray` extra: `pip install -e '.[ray]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpt_classifier.deploy.scoring import BatchScorer, ScoringOptions

if TYPE_CHECKING:
    import ray.data


def score_dataset(
    dataset: ray.data.Dataset,
    model_path: str | Path,
    options: ScoringOptions,
    *,
    workers: int = 2,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    batch_rows: int = 1000,
    device: str = "cpu",
) -> ray.data.Dataset:
    """`dataset` with the prediction columns of `score_frame` added, scored by `workers` actors.

    Each actor reserves `cpus_per_worker` CPUs (and `gpus_per_worker` GPUs, with `device="cuda"`)
    for as long as the dataset runs: leave some CPUs for the tasks that read and write it.
    `batch_rows` rows go to an actor at a time (its memory holds one batch); rows keep their order
    within a batch, and the dataset's own order with
    `DataContext.get_current().execution_options.preserve_order = True`.
    """
    return dataset.map_batches(
        BatchScorer,
        fn_constructor_kwargs={"model_path": str(model_path), "options": options, "device": device},
        batch_format="pandas",
        batch_size=batch_rows,
        concurrency=workers,
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
    )
