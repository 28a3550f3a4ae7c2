"""backend="spark": hub workers as long-lived tasks of Spark in local[2] mode, one session for
the module; per-worker data from a broadcast or a DataFrame."""

from __future__ import annotations

import os
import sys

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tunefleet import _attrs as attrs
from tests.remote import objectives

pyspark = pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # Python workers run the interpreter where tunefleet is installed (local mode reads the
    # environment variable, not spark.pyspark.python).
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("tunefleet-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.python.worker.reuse", "true")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if old is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = old


def check_study(study: optuna.Study, n: int) -> None:
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == n
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_a_60_trial_study_on_spark(spark):
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({"x": 2.0, "y": 0})
    tunefleet.optimize(study, objectives.quadratic, n_trials=60, backend="spark")
    check_study(study, 60)
    assert len(study.trials) == 60
    assert study.best_value == 0.0 and study.best_params == {"x": 2.0, "y": 0}
    workers = {t.system_attrs[attrs.WORKER] for t in study.trials}
    assert all(w.startswith("spark-") for w in workers) and len(workers) <= 2


def test_a_killed_spark_python_worker_fails_its_trial_which_is_retried(spark):
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.dies_at(10, sleep=0.02), n_trials=50, backend="spark",
                       spark=spark)
    check_study(study, 50)
    dead = study.trials[10]
    assert dead.state == TrialState.FAIL and dead.system_attrs[attrs.FAIL_REASON]
    retry = [t for t in study.trials if t.system_attrs.get(attrs.RETRY_OF) == 10]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE


def test_broadcast_data_reaches_the_setup_once_per_worker(spark, tmp_path):
    shared = spark.sparkContext.broadcast({"rows": [1, 2, 3]})
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.tagging, n_trials=30, backend="spark", data=shared,
                       setup=objectives.make_setup(str(tmp_path)))
    check_study(study, 30)
    tokens = {t.user_attrs["token"] for t in study.trials}
    assert tokens == {p.name for p in tmp_path.iterdir()}
    assert len(tokens) == len({t.system_attrs[attrs.WORKER] for t in study.trials}) <= 2
    assert {t.user_attrs["seen"] for t in study.trials} == {repr({"rows": [1, 2, 3]})}


def test_dataframe_partition_reaches_each_worker(spark, tmp_path):
    frame = spark.createDataFrame([(i, i * i) for i in range(5)], ["a", "b"])
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.tagging, n_trials=10, backend="spark", data=frame,
                       setup=objectives.make_setup(str(tmp_path)))
    check_study(study, 10)
    seen = {t.user_attrs["seen"] for t in study.trials}
    assert len(seen) == 1 and "Row(a=4, b=16)" in seen.pop()
