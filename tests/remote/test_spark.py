"""backend="spark": hub workers as long-lived tasks of Spark in local[2] mode, one session for
the module (the ``spark`` fixture of tests/conftest.py); per-worker data from a broadcast or a
DataFrame."""

from __future__ import annotations

import optuna
import pytest

import tunefleet
from tests.remote import objectives
from tests.remote.engines import (check_study, run_60_trials, run_with_a_killed_worker,
                                  run_with_setup)

pyspark = pytest.importorskip("pyspark")


def test_a_60_trial_study_on_spark(spark):
    run_60_trials("spark")


def test_a_killed_spark_python_worker_fails_its_trial_which_is_retried(spark):
    run_with_a_killed_worker("spark", spark=spark)


def test_broadcast_data_reaches_the_setup_once_per_worker(spark, tmp_path):
    shared = spark.sparkContext.broadcast({"rows": [1, 2, 3]})
    study = run_with_setup("spark", tmp_path, data=shared)
    assert {t.user_attrs["seen"] for t in study.trials} == {repr({"rows": [1, 2, 3]})}


def test_dataframe_partition_reaches_each_worker(spark, tmp_path):
    frame = spark.createDataFrame([(i, i * i) for i in range(5)], ["a", "b"])
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.tagging, n_trials=10, backend="spark", data=frame,
                       setup=objectives.make_setup(str(tmp_path)))
    check_study(study, 10)
    seen = {t.user_attrs["seen"] for t in study.trials}
    assert len(seen) == 1 and "Row(a=4, b=16)" in seen.pop()
