"""MLflow: a parent run per study and a nested run per trial, opened in the worker that trains.

Workers talk to the tracking store through ``MlflowClient`` with explicit run ids instead of
``mlflow.start_run``'s process-global active run, so that trials running side by side in one
process do not log into each other's runs. ``MLFLOW_TRACKING_URI`` keeps its meaning.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import optuna

from tunefleet.tracking._base import Tracker, TrackerRun

STUDY_TAG = "tunefleet.study"
ROLE_TAG = "tunefleet.role"
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
_FLUSH_EVERY = 500  # buffered metric points per log_batch call
_FLUSH_SECONDS = 10.0


def _client(uri: str | None) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError("mlflow is not installed: pip install 'tunefleet[mlflow]'") from None
    return MlflowClient(tracking_uri=uri)


class MlflowTracker(Tracker):
    """Trials are nested runs (``mlflow.parentRunId``) under one run for the study, in the
    experiment ``experiment_name`` (default: the study's name)."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment_name: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None

    def prepare(self, study_name: str) -> None:
        """Fix the store (so that workers write where the study's owner does) and the parent run."""
        import mlflow

        self.tracking_uri = self.tracking_uri or mlflow.get_tracking_uri()
        self.experiment_id, self.parent_run_id = self._parent(_client(self.tracking_uri),
                                                              study_name)

    def end_study(self, study: optuna.Study) -> None:
        if self.parent_run_id is None:
            return
        client = _client(self.tracking_uri)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        client.set_tag(self.parent_run_id, "tunefleet.n_trials", str(len(study.trials)))
        if done and len(study.directions) == 1:
            client.log_metric(self.parent_run_id, "best_value", study.best_value)
            client.set_tag(self.parent_run_id, "tunefleet.best_trial", str(study.best_trial.number))
        client.set_terminated(self.parent_run_id, "FINISHED")

    def open(self, study_name: str, trial_number: int, config: Mapping[str, Any]) -> TrackerRun:
        client = _client(self.tracking_uri)
        if self.parent_run_id is None or self.experiment_id is None:
            # No owner prepared it (storage or peer mode): find or create it from here.
            self.experiment_id, self.parent_run_id = self._parent(client, study_name)
        run = client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial_number}",
            tags={"mlflow.parentRunId": self.parent_run_id, STUDY_TAG: study_name,
                  ROLE_TAG: "trial", "tunefleet.trial": str(trial_number)},
        )
        out = _MlflowRun(client, run.info.run_id)
        out.log_params(config)
        return out

    def _parent(self, client: Any, study_name: str) -> tuple[str, str]:
        name = self.experiment_name or study_name
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            try:
                exp_id = client.create_experiment(name)
            except Exception:  # another worker created it since: use theirs
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        found = client.search_runs(
            [exp_id], filter_string=f"tags.`{STUDY_TAG}` = '{study_name}' and "
                                    f"tags.`{ROLE_TAG}` = 'study'", max_results=1)
        if found:
            return exp_id, found[0].info.run_id
        run = client.create_run(exp_id, run_name=f"study-{study_name}",
                                tags={STUDY_TAG: study_name, ROLE_TAG: "study"})
        return exp_id, run.info.run_id


class _MlflowRun(TrackerRun):
    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.logged_params: set[str] = set()
        self.buffer: list[Any] = []
        self.flushed_at = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        new = [Param(str(k), str(v)[:6000]) for k, v in params.items()
               if str(k) not in self.logged_params]
        if new:
            self.client.log_batch(self.run_id, params=new)
            self.logged_params.update(p.key for p in new)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self.buffer) >= _FLUSH_EVERY or time.monotonic() - self.flushed_at > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        while self.buffer:
            chunk, self.buffer = self.buffer[:_FLUSH_EVERY], self.buffer[_FLUSH_EVERY:]
            self.client.log_batch(self.run_id, metrics=chunk)
        self.flushed_at = time.monotonic()

    def finish(self, value: float | None, state: str, params: Mapping[str, Any]) -> None:
        try:
            self.flush()
            self.log_params(params)
            if value is not None:
                self.client.log_metric(self.run_id, "value", float(value))
            self.client.set_tag(self.run_id, "tunefleet.state", state)
        finally:
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(state, "FAILED"))
