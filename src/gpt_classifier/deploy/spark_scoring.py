"""Score a Spark DataFrame with `mapInPandas`: one model load per Python worker, pandas batches through it.

The model travels as a path every executor can read (a shared filesystem, or a file shipped with
`spark-submit --files`); each Python worker loads it once, on its first batch. Needs the `spark`
extra (`pip install -e '.[spark]'`) and a Java runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.deploy.scoring import BatchScorer, ScoringOptions, prediction_columns

if TYPE_CHECKING:
    import pyspark.sql


@cache
def worker_scorer(model_path: str, options: ScoringOptions, device: str) -> BatchScorer:
    """The scorer of this Python worker: built on first use, reused for every later batch."""
    return BatchScorer(model_path, options, device)


def prediction_schema(frame: pyspark.sql.DataFrame, class_names: list[str], column_prefix: str):
    """`frame`'s schema with the prediction columns: the label, probabilities and the error (if any)."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    label, probability, *per_class, error = prediction_columns(class_names, column_prefix)
    added = [StructField(label, StringType()), StructField(probability, DoubleType())]
    added += [StructField(name, DoubleType()) for name in per_class]
    return StructType([*frame.schema.fields, *added, StructField(error, StringType())])


def score_spark_frame(
    frame: pyspark.sql.DataFrame, model_path: str | Path, options: ScoringOptions, device: str = "cpu"
) -> pyspark.sql.DataFrame:
    """`frame` with the prediction columns of `score_frame` added, scored partition by partition.

    The driver reads the model's class names once, for the output schema; the executors score.
    Batches are `spark.sql.execution.arrow.maxRecordsPerBatch` rows (10,000 by default).
    """
    model_path = str(model_path)
    class_names = load_predictor(model_path).class_names

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = worker_scorer(model_path, options, device)
        for batch in batches:
            yield scorer(batch)

    return frame.mapInPandas(score_batches, prediction_schema(frame, class_names, options.column_prefix))
