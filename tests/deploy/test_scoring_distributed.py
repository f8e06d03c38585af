"""Ray Data (a local 2-CPU cluster) and Spark (`local[2]`) score a table as the single process does.

These run in CI: without the `ray` or `spark` extra they skip on a developer's machine, but fail
under `CI=true`, where `pip install -e ".[dev]"` must have installed them.
"""

import importlib
import math
import os
import sys

import pandas as pd
import pytest
from helpers import write_random_checkpoint

from gpt_classifier.deploy.scoring import FileOptions, ScoringOptions, score_file

ROWS = 300


def require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{module} is not installed: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The model, the input table and what the single-process `score_file` makes of it."""
    folder = tmp_path_factory.mktemp("distributed")
    model_path = write_random_checkpoint(folder / "model.ckpt", ["ham", "spam"])
    texts = [
        f"message {i}: " + ("win a prize, call now\n" if i % 4 else "dinner at 8? ") * (1 + i % 9)
        for i in range(ROWS)
    ]
    texts[7] = ""
    source = pd.DataFrame({"id": range(ROWS), "text": texts, "note": [f"n{i}" for i in range(ROWS)]})
    source.to_parquet(folder / "in.parquet", index=False)
    output = folder / "out.parquet"
    score_file(
        model_path,
        folder / "in.parquet",
        output,
        ScoringOptions(),
        FileOptions(on_bad_row="keep"),
        report=lambda line: None,
    )
    return model_path, source, pd.read_parquet(output)


def assert_same_predictions(scored: pd.DataFrame, expected: pd.DataFrame) -> None:
    scored = scored.sort_values("id").reset_index(drop=True)
    assert list(scored.columns) == list(expected.columns)
    for column in ("id", "text", "note", "label", "error"):
        assert scored[column].fillna("-").tolist() == expected[column].fillna("-").tolist(), column
    for column in ("probability", "probability_ham", "probability_spam"):
        for got, want in zip(scored[column], expected[column], strict=True):
            assert (pd.isna(got) and pd.isna(want)) or math.isclose(got, want, abs_tol=1e-5)


def start_local_ray(ray) -> None:
    """A local 2-CPU cluster. On a loaded machine the raylet can give up waiting for its metrics
    agent (a fixed 15 s in Ray) and the start fails: one such failure is retried."""
    for attempt in range(2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            return
        except Exception as err:
            ray.shutdown()
            if attempt or "timed out during startup" not in str(err):
                raise


def test_ray_data_on_two_workers_equals_the_single_process(single_process):
    ray = require("ray")
    from gpt_classifier.deploy.ray_scoring import score_dataset

    model_path, source, expected = single_process
    start_local_ray(ray)
    try:
        blocks = [source.iloc[start : start + 80] for start in range(0, ROWS, 80)]
        dataset = ray.data.from_pandas(blocks)  # 4 blocks: both actors get work, no task needs a CPU
        scored = score_dataset(dataset, model_path, ScoringOptions(), workers=2, batch_rows=64).to_pandas()
    finally:
        ray.shutdown()
    assert_same_predictions(scored, expected)


def test_spark_local_two_equals_the_single_process(single_process, monkeypatch):
    require("pyspark")
    from pyspark.sql import SparkSession

    from gpt_classifier.deploy.spark_scoring import score_spark_frame

    model_path, source, expected = single_process
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # the workers use this venv too
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("score-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .getOrCreate()
    )
    try:
        frame = spark.createDataFrame(source).repartition(4)
        scored = score_spark_frame(frame, model_path, ScoringOptions()).toPandas()
    finally:
        spark.stop()
    assert_same_predictions(scored, expected)
