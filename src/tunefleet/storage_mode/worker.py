"""The storage-mode worker loop: claim a trial within the budget, run it, report it; fail the
trials of dead workers and queue their parameters again; stop when the study holds the budget."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import traceback
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet import attrs
from tunefleet.storage_mode.atomic import pop_waiting
from tunefleet.storage_mode.backoff import is_transient, with_backoff
from tunefleet.storage_mode.budget import census, has_room, within_budget
from tunefleet.storage_mode.heartbeat import Heartbeat, fail_trial, queue_retry

_log = logging.getLogger("tunefleet.storage")


class WorkerStopped(BaseException):
    """Raised from a signal handler (SIGTERM, SIGINT) to end the running trial and leave."""


class ObjectiveFailed(Exception):
    """The objective raised and the worker was told not to catch it."""

    def __init__(self, number: int, exc: BaseException) -> None:
        super().__init__(f"trial {number} failed: {type(exc).__name__}: {exc}")
        self.number = number
        self.original = exc


def default_worker_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclasses.dataclass
class WorkerOptions:
    """How one worker behaves; ``n_trials`` is the budget of the whole study, not of the worker."""

    n_trials: int
    timeout: float | None = None
    catch: bool = False
    max_retries: int = 1
    heartbeat_interval: int = 10
    grace_period: int = 30
    poll: float = 0.2
    worker_id: str = dataclasses.field(default_factory=default_worker_id)


@dataclasses.dataclass
class WorkerResult:
    """What this worker did, and why it stopped ("budget reached", "timeout", ...)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    void: int = 0
    reaped: int = 0  # trials of dead workers this worker failed
    retries_queued: int = 0
    reason: str = ""


class StorageWorker:
    """One worker of a shared-storage study."""

    def __init__(self, study: optuna.Study, objective: Callable[[optuna.Trial], Any],
                 options: WorkerOptions) -> None:
        self.study = study
        self.objective = objective
        self.opts = options
        self.storage = study._storage
        self.heartbeat = Heartbeat(study, options.heartbeat_interval, options.grace_period)
        self.result = WorkerResult()
        self._last_reap = 0.0
        self.host = socket.gethostname()

    # -- reading -------------------------------------------------------------------------------
    def _trials(self) -> list[FrozenTrial]:
        return with_backoff(lambda: self.storage.get_all_trials(self.study._study_id,
                                                                deepcopy=False),
                            what="read trials")

    def _reap(self, trials: list[FrozenTrial], force: bool = False) -> None:
        """Fail the trials of workers that stopped beating (at most once per interval)."""
        now = time.monotonic()
        if not force and now - self._last_reap < self.opts.heartbeat_interval:
            return
        self._last_reap = now
        for t in with_backoff(lambda: self.heartbeat.stale(trials), what="find stale trials"):
            reason = (f"worker {t.system_attrs.get(attrs.WORKER, '?')} stopped sending "
                      f"heartbeats (grace period {self.opts.grace_period}s)")
            if with_backoff(lambda: fail_trial(self.study, t, reason), what="fail stale trial"):
                self.result.reaped += 1
                _log.warning("trial %d: %s; failed it", t.number, reason)
                if with_backoff(lambda: queue_retry(self.study, t, self.opts.max_retries),
                                what="queue retry"):
                    self.result.retries_queued += 1

    # -- claiming ------------------------------------------------------------------------------
    def _claim(self, waiting_seen: bool) -> int:
        """Pop a WAITING trial (a retry or an enqueued one) or create one; return its id.

        A new trial is created with the worker's attributes in one write; its first heartbeat
        is the heartbeat thread's first beat.
        """
        study = self.study
        study._thread_local.cached_all_trials = None
        trial_id = None
        if waiting_seen:
            trial_id = with_backoff(lambda: pop_waiting(study), what="claim waiting trial")
        now = time.time()
        if trial_id is not None:
            for key, value in ((attrs.WORKER, self.opts.worker_id), (attrs.HOST, self.host),
                               (attrs.STARTED, now)):
                with_backoff(lambda: self.storage.set_trial_system_attr(trial_id, key, value),
                             what="record worker")
            with_backoff(lambda: self.heartbeat.beat(trial_id), what="heartbeat")
            return trial_id
        system_attrs = {attrs.WORKER: self.opts.worker_id, attrs.HOST: self.host,
                        attrs.STARTED: now}
        if not self.heartbeat.native:
            system_attrs[attrs.HEARTBEAT] = now
        template = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs=system_attrs)
        return with_backoff(lambda: self.storage.create_new_trial(study._study_id, template),
                            what="create trial")

    def _void(self, trial_id: int) -> None:
        def close() -> None:
            self.storage.set_trial_system_attr(trial_id, attrs.VOID, True)
            self.storage.set_trial_system_attr(
                trial_id, attrs.FAIL_REASON,
                "over budget: other workers took the last places first; not run")
            self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)

        with_backoff(close, what="close trial over budget")
        self.result.void += 1

    # -- running -------------------------------------------------------------------------------
    def _finish(self, trial: optuna.Trial, state: TrialState, values: Any = None,
                reason: str | None = None) -> None:
        def tell() -> FrozenTrial:
            if reason is not None:
                self.storage.set_trial_system_attr(trial._trial_id, attrs.FAIL_REASON, reason)
            self.storage.set_trial_system_attr(trial._trial_id, attrs.FINISHED, time.time())
            return self.study.tell(trial, values, state=state)

        try:
            frozen = with_backoff(tell, what="report trial")
        except optuna.exceptions.UpdateFinishedTrialError:
            _log.warning("trial %d was failed by another worker (no heartbeat within %ss); "
                         "its result is dropped", trial.number, self.opts.grace_period)
            return
        except ValueError as exc:  # Optuna: "Cannot tell a finished trial" in some versions
            if "finished" not in str(exc).lower():
                raise
            return
        final = frozen.state
        if final == TrialState.COMPLETE:
            self.result.complete += 1
        elif final == TrialState.PRUNED:
            self.result.pruned += 1
        else:
            self.result.failed += 1
        _log.info("trial %d %s by %s", trial.number, final.name.lower(), self.opts.worker_id)

    def _run_one(self, trial_id: int) -> None:
        self.heartbeat.start(trial_id)
        try:
            trial = with_backoff(lambda: optuna.Trial(self.study, trial_id), what="start trial")
            try:
                value = self.objective(trial)
            except optuna.TrialPruned:
                self.heartbeat.stop()
                self._finish(trial, TrialState.PRUNED)
                return
            except WorkerStopped:
                self.heartbeat.stop()
                self._finish(trial, TrialState.FAIL, reason="worker was stopped by a signal")
                frozen = self.storage.get_trial(trial_id)
                if queue_retry(self.study, frozen, self.opts.max_retries):
                    self.result.retries_queued += 1
                raise
            except Exception as exc:
                self.heartbeat.stop()
                reason = f"{type(exc).__name__}: {exc}"[:1000]
                self._finish(trial, TrialState.FAIL, reason=reason)
                if is_transient(exc):
                    _log.warning("trial %d failed on a busy storage (%s); going on",
                                 trial.number, reason)
                    return
                if not self.opts.catch:
                    raise ObjectiveFailed(trial.number, exc) from exc
                _log.warning("trial %d failed: %s\n%s", trial.number, reason,
                             traceback.format_exc().rstrip())
                return
            self.heartbeat.stop()
            self._finish(trial, TrialState.COMPLETE, value)
        finally:
            self.heartbeat.stop()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> WorkerResult:
        total = self.opts.n_trials
        started = time.monotonic()
        roomy = False  # the last read left so much room that a fresh census can wait
        while True:
            if self.opts.timeout is not None and time.monotonic() - started > self.opts.timeout:
                self.result.reason = "timeout"
                return self.result
            reap_due = time.monotonic() - self._last_reap >= self.opts.heartbeat_interval
            waiting_seen = True
            if not roomy or reap_due:
                trials = self._trials()
                c = census(trials, total)
                if c.done >= total:
                    self.result.reason = "budget reached"
                    return self.result
                if not has_room(c, total):
                    self._reap(trials)  # only a dead worker's trial can free a place now
                    time.sleep(self.opts.poll)
                    continue
                self._reap(trials)
                waiting_seen = c.claimable_waiting > 0
            trial_id = self._claim(waiting_seen)
            # This read also fills the study's per-trial cache, which the sampler then reuses.
            view = with_backoff(lambda: self.study._get_trials(deepcopy=False, use_cache=True),
                                what="read trials")
            number = next(t.number for t in view if t._trial_id == trial_id)
            after = census(view, total)
            # Skipping the census only risks a void trial, never the budget: the rank decides.
            roomy = (total - after.live > 2 * after.running + 4
                     and not any(t.state == TrialState.WAITING for t in view))
            if not within_budget(view, number, total):
                self._void(trial_id)
                continue
            self._run_one(trial_id)


def run_storage_worker(study: optuna.Study, objective: Callable[[optuna.Trial], Any],
                       options: WorkerOptions) -> WorkerResult:
    """Run OBJECTIVE as one worker of STUDY until the study holds ``options.n_trials``
    complete-or-pruned trials (counted over all workers), or ``options.timeout`` passes."""
    return StorageWorker(study, objective, options).run()
