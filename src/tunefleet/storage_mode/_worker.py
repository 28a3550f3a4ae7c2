"""The storage-mode worker loop: claim a trial within the budget, run it, report it; fail the
trials of dead workers and queue their parameters again; stop when the study holds the budget."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import math
import traceback
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet import _attrs as attrs
from tunefleet import _children as children
from tunefleet import checkpoint
from tunefleet._optuna import UpdateFinishedTrialError, storage_location
from tunefleet._retry import lineage
from tunefleet.errors import ObjectiveFailed, OptionError
from tunefleet.samplers import Reseeder, SeededTrial
from tunefleet.storage_mode._atomic import _rdb, create_within_budget, pop_waiting
from tunefleet._outage import DEFAULT_STORAGE_TIMEOUT
from tunefleet._outage import seconds_since_outage
from tunefleet.storage_mode._backoff import is_transient, with_backoff
from tunefleet.storage_mode._patient import wait_out_outages
from tunefleet.storage_mode._budget import Census, census, has_room, within_budget
from tunefleet.storage_mode._heartbeat import Heartbeat, fail_trial, queue_retry
from tunefleet.checkpoint import in_trial

_log = logging.getLogger("tunefleet.storage")
T = TypeVar("T")


class WorkerStopped(BaseException):
    """Raised from a signal handler (SIGTERM, SIGINT) to end the running trial and leave."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


def check_values(value: Any, n_objectives: int) -> tuple[list[float] | None, str | None]:
    """What ``study.optimize`` accepts as an objective's result: (floats, None), or (None,
    why) for a value it would mark FAIL (None, text, NaN, wrong number of values, an object
    that is no number). Never raises, whatever the objective returned."""
    if value is None:
        return None, "The value None could not be cast to float."
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = list(value)
    else:
        items = [value]
    out: list[float] = []
    errors: list[str] = []
    for v in items:
        try:
            f = float(v)
        except Exception:
            errors.append(f"The value {_short_repr(v)} could not be cast to float")
            continue
        if math.isnan(f):
            errors.append(f"The value {f} is not acceptable")
        out.append(f)
    if errors:
        return None, "; ".join(errors)
    if len(out) != n_objectives:
        return None, (f"The number of the values {len(out)} did not match the number of the "
                      f"objectives {n_objectives}")
    return out, None


def _hit_a_finished_trial(exc: BaseException) -> bool:
    """Whether EXC is, or was raised while handling, Optuna's refusal to update a finished
    trial (an objective may wrap the error of its ``trial.report`` in its own)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, UpdateFinishedTrialError):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 200 else text[:197] + "..."


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
    #: the study's seed (its recorded spec): each trial draws from (seed, number, parameter)
    #: only, so that a run continued later draws what one uninterrupted run would have drawn
    #: (see :mod:`tunefleet.samplers._seeded`); None draws from the sampler's own state.
    seed: int | None = None
    #: where ``tunefleet.checkpoint.save`` keeps trials' checkpoints, a folder every worker
    #: reaches; None: beside the storage's file (SQLite, journal), none for a server.
    checkpoint_dir: str | None = None
    #: an Optuna artifact store (``FileSystemArtifactStore``, ``Boto3ArtifactStore``, ...)
    #: every worker reaches, instead of a folder: for workers on hosts that share no disk.
    checkpoint_store: Any = None
    #: keep the checkpoints of trials that ended for good (default: removed).
    keep_checkpoints: bool = False
    #: seconds every storage call waits out a database that is away (restarted, failed over,
    #: unreachable) before the worker ends with ``StorageUnreachable``.
    storage_timeout: float = DEFAULT_STORAGE_TIMEOUT


@dataclasses.dataclass
class WorkerResult:
    """What this worker did, and why it stopped ("budget reached", "timeout", ...)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    void: int = 0
    reaped: int = 0  # trials of dead workers this worker failed
    dropped: int = 0  # own trials others failed while this worker was silent
    retries_queued: int = 0
    handed_back: int = 0  # trials preempted (SIGTERM) and queued to continue elsewhere
    reason: str = ""


def _checkpoints(study: optuna.Study,
                 options: WorkerOptions) -> checkpoint.FolderStore | checkpoint.ArtifactCheckpoints | None:
    """Where the study's trials keep their checkpoints: the artifact store given, indexed in
    the study (shared by every worker); else the folder given, or the one beside the storage's
    file; None for a database server and no folder (``checkpoint.load`` is then always None)."""
    if options.checkpoint_store is not None:
        if options.checkpoint_dir is not None:
            raise OptionError("give checkpoint_dir (a folder) or checkpoint_store (an Optuna "
                              "artifact store), not both")
        return checkpoint.ArtifactCheckpoints(options.checkpoint_store, study._storage,
                                              study._study_id, shared=True)
    root = checkpoint.default_root(storage_location(study._storage), study.study_name,
                                   options.checkpoint_dir)
    return checkpoint.FolderStore(root) if root is not None else None


class StorageWorker:
    """One worker of a shared-storage study."""

    def __init__(self, study: optuna.Study, objective: Callable[[optuna.Trial], Any],
                 options: WorkerOptions) -> None:
        self.study = study
        self.objective = objective
        self.opts = options
        self.storage = study._storage
        # the objective's own storage calls (trial.suggest_*, trial.report) wait out outages too
        wait_out_outages(_rdb(self.storage) or self.storage, options.storage_timeout)
        self.heartbeat = Heartbeat(study, options.heartbeat_interval, options.grace_period)
        self.result = WorkerResult()
        self._last_reap = 0.0
        self.host = socket.gethostname()
        # Optuna's datetime_complete is the finish time the report uses, except on MySQL and
        # MariaDB, whose DATETIME columns keep whole seconds: only there is it worth a write.
        rdb = _rdb(self.storage)
        self._record_finish = rdb is not None and rdb.engine.dialect.name in ("mysql", "mariadb")
        self.checkpoints = _checkpoints(study, options)
        self._reseed: Reseeder | None = None
        if options.seed is not None:
            self._reseed = Reseeder(study.sampler, options.seed) or None

    def _retry(self, call: Callable[[], T], what: str) -> T:
        """CALL, run again on a busy storage, and while the database is away for up to the
        storage timeout (then ``StorageUnreachable`` ends the worker)."""
        return with_backoff(call, what=what, outage_wait=self.opts.storage_timeout)

    # -- reading -------------------------------------------------------------------------------
    def _trials(self) -> list[FrozenTrial]:
        return self._retry(lambda: self.storage.get_all_trials(self.study._study_id,
                                                               deepcopy=False),
                           what="read trials")

    def _reap(self, trials: list[FrozenTrial], force: bool = False) -> None:
        """Fail the trials of workers that stopped beating (at most once per interval).

        Not within a grace period after this process saw the database away: no worker could
        beat meanwhile, and the live ones beat again within an interval of its return."""
        now = time.monotonic()
        if not force and now - self._last_reap < self.opts.heartbeat_interval:
            return
        self._last_reap = now
        if seconds_since_outage() < self.opts.grace_period:
            return
        # After an outage whose reply was lost, fail_trial may say False for the FAIL it wrote:
        # the trial is failed all the same, only its retry is not queued (the budget holds).
        for t in self._retry(lambda: self.heartbeat.stale(trials), what="find stale trials"):
            reason = (f"worker {t.system_attrs.get(attrs.WORKER, '?')} stopped sending "
                      f"heartbeats (grace period {self.opts.grace_period}s)")
            if self._retry(lambda: fail_trial(self.study, t, reason), what="fail stale trial"):
                self.result.reaped += 1
                _log.warning("trial %d: %s; failed it", t.number, reason)
                if self._retry(lambda: queue_retry(self.study, t, self.opts.max_retries,
                                                   self.opts.n_trials),
                               what="queue retry"):
                    self.result.retries_queued += 1
                else:
                    self._forget(t)

    # -- claiming ------------------------------------------------------------------------------
    def _claim(self, last: Census) -> tuple[int, int] | None:
        """Pop a WAITING trial (a retry or an enqueued one) or create one; return (id, number),
        or None when the study has no room (its places are all taken by trials that count).
        A WAITING trial is taken only when LAST proves it within the budget, so that it is
        never voided (it may be a retry, or a trial the user enqueued).

        A new trial is created with the worker's attributes in one write, and only within the
        budget (:func:`.atomic.create_within_budget`); its ``tunefleet:started`` is its first
        heartbeat (see :mod:`.heartbeat`).
        """
        study = self.study
        study._thread_local.cached_all_trials = None
        now = time.time()
        total = self.opts.n_trials
        popped = self._retry(lambda: pop_waiting(study, lambda n: last.rank(n) < total),
                             what="claim waiting trial")
        if popped is not None:
            trial_id = popped[0]
            for key, value in ((attrs.STARTED, now), (attrs.WORKER, self.opts.worker_id),
                               (attrs.HOST, self.host)):
                self._retry(lambda: self.storage.set_trial_system_attr(trial_id, key, value),
                            what="record worker")
            return popped
        system_attrs = {attrs.WORKER: self.opts.worker_id, attrs.HOST: self.host,
                        attrs.STARTED: now}
        return self._retry(lambda: create_within_budget(self.storage, study._study_id,
                                                        system_attrs, total),
                           what="create trial")

    def _void(self, trial_id: int) -> None:
        def close() -> None:
            self.storage.set_trial_system_attr(trial_id, attrs.VOID, True)
            self.storage.set_trial_system_attr(
                trial_id, attrs.FAIL_REASON,
                "over budget: other workers took the last places first; not run")
            self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)

        self._retry(close, what="close trial over budget")
        self.result.void += 1

    # -- running -------------------------------------------------------------------------------
    def _finish(self, trial: optuna.Trial, state: TrialState, values: Any = None,
                reason: str | None = None, *, ended: bool = True) -> bool:
        """Tell the trial's end; False when others failed it first (its result is dropped).
        ``ended``: the trial ended for good (it is counted, its checkpoints go); else a retry
        continues it."""
        def tell() -> FrozenTrial:
            if reason is not None:
                self.storage.set_trial_system_attr(trial._trial_id, attrs.FAIL_REASON, reason)
            if self._record_finish:
                self.storage.set_trial_system_attr(trial._trial_id, attrs.FINISHED, time.time())
            return self.study.tell(trial, values, state=state)

        try:
            frozen = self._retry(tell, what="report trial")
        except (UpdateFinishedTrialError, ValueError) as exc:
            # Optuna: "Cannot tell a FAIL trial" (ValueError) or UpdateFinishedTrialError
            landed = self._landed(trial, state)
            if landed is not None:
                frozen = landed
            elif not self._taken_over(trial):
                raise
            else:
                self._dropped(trial, exc)
                return False
        final = frozen.state
        if not ended:
            return True
        self._forget(frozen)
        if final == TrialState.COMPLETE:
            self.result.complete += 1
        elif final == TrialState.PRUNED:
            self.result.pruned += 1
        else:
            self.result.failed += 1
        _log.info("trial %d %s by %s", trial.number, final.name.lower(), self.opts.worker_id)
        return True

    def _forget(self, trial: FrozenTrial) -> None:
        """TRIAL ended for good: its lineage's checkpoints go, unless the user keeps them."""
        if self.checkpoints is not None and not self.opts.keep_checkpoints:
            self.checkpoints.remove(lineage(trial))

    def _call(self, trial: optuna.Trial) -> Any:
        """The objective on TRIAL, with the trial's checkpoints (``tunefleet.checkpoint``) and
        SIGTERM's grace period (``tunefleet.checkpoint.install_preemption``)."""
        session = (self.checkpoints.session(trial.number, lineage(trial._cached_frozen_trial))
                   if self.checkpoints is not None else None)
        with checkpoint.running(session):
            in_trial(True)
            children.trial_started()
            try:
                if checkpoint.stop_requested():
                    raise checkpoint.Preempted("the worker was stopped before the trial began")
                return self.objective(trial)
            finally:
                in_trial(False)
                children.trial_ended()  # processes the trial left running end with it

    def _hand_back(self, trial: optuna.Trial, why: str) -> None:
        """The worker was stopped (SIGTERM): FAIL the trial with the reason and queue its
        continuation, which uses up no retry and starts from the trial's last checkpoint."""
        reason = f"preempted: the worker was stopped (SIGTERM) and handed the trial back; {why}"
        if not self._finish(trial, TrialState.FAIL, reason=reason, ended=False):
            return
        frozen = self._retry(lambda: self.storage.get_trial(trial._trial_id), what="read trial")
        if self._retry(lambda: queue_retry(self.study, frozen, self.opts.max_retries,
                                           self.opts.n_trials, handed_back=True),
                       what="queue retry"):
            self.result.handed_back += 1
            _log.warning("trial %d handed back (%s)", trial.number, why)
        else:
            self._forget(frozen)

    def _landed(self, trial: optuna.Trial, state: TrialState) -> FrozenTrial | None:
        """The trial as stored when the COMPLETE or PRUNED just told was written by this worker
        (the database went away after the commit and before its reply, and telling it again
        found it finished: others only ever FAIL a trial), else None."""
        if state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return None
        frozen = self._retry(lambda: self.storage.get_trial(trial._trial_id), what="read trial")
        return frozen if frozen.state == state else None

    def _taken_over(self, trial: optuna.Trial) -> bool:
        """Whether another worker failed this trial (we were silent past the grace period:
        stopped, swapped out, cut off by the network) and it is no longer ours to report."""
        try:
            state = self._retry(lambda: self.storage.get_trial(trial._trial_id).state,
                                what="read trial")
        except Exception:
            return False
        return state != TrialState.RUNNING

    def _dropped(self, trial: optuna.Trial, exc: BaseException | None = None) -> None:
        """One warning for a result that came too late; the worker goes on with a new trial."""
        why = f" ({type(exc).__name__})" if exc is not None else ""
        _log.warning("trial %d was failed by another worker while this one was silent (no "
                     "heartbeat within %ss); its result is dropped and this worker goes on%s",
                     trial.number, self.opts.grace_period, why)
        self.result.dropped += 1

    def _new_trial(self, trial_id: int, number: int) -> optuna.Trial:
        if self._reseed is None:
            return optuna.Trial(self.study, trial_id)
        self._reseed(number)  # the sampler's before_trial runs in the constructor
        return SeededTrial(self.study, trial_id, self._reseed)

    def _run_one(self, trial_id: int, number: int) -> None:
        self.heartbeat.start(trial_id)
        try:
            trial = self._retry(lambda: self._new_trial(trial_id, number), what="start trial")
            try:
                value = self._call(trial)
            except checkpoint.Preempted as exc:
                self.heartbeat.stop()
                self._hand_back(trial, str(exc))
                return
            except optuna.TrialPruned:
                self.heartbeat.stop()
                self._finish(trial, TrialState.PRUNED)
                return
            except WorkerStopped:
                self.heartbeat.stop()
                self._finish(trial, TrialState.FAIL, reason="worker was stopped by a signal",
                             ended=False)
                frozen = self.storage.get_trial(trial_id)
                if queue_retry(self.study, frozen, self.opts.max_retries, self.opts.n_trials):
                    self.result.retries_queued += 1
                else:
                    self._forget(frozen)
                raise
            except Exception as exc:
                self.heartbeat.stop()
                if _hit_a_finished_trial(exc) and self._taken_over(trial):
                    # trial.report / suggest / set_user_attr hit the trial others failed
                    self._dropped(trial, exc)
                    return
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
            values, problem = check_values(value, len(self.study.directions))
            if problem is not None:
                # As study.optimize does: FAIL with the reason, a warning, and go on.
                shown = _short_repr(value)
                reason = problem if shown in problem else f"objective returned {shown}: {problem}"
                _log.warning("trial %d failed: %s", trial.number, reason)
                self._finish(trial, TrialState.FAIL, reason=reason[:1000])
                return
            self._finish(trial, TrialState.COMPLETE, values)
        finally:
            self.heartbeat.stop()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> WorkerResult:
        """Claim, check, run, until the study holds the budget.

        The full read of the study (the census) is needed only now and then: failed trials
        never stop being failed, so the failures an older census saw below a new trial's number
        are a lower bound on its failures below, and ``last.rank(number) < total`` already
        proves the trial within the budget. Only near the end, when that bound is not enough,
        and once per heartbeat interval (to fail the trials of dead workers), is the study read
        again; in between a trial costs what it costs under ``study.optimize``.
        """
        total = self.opts.n_trials
        started = time.monotonic()
        last: Census | None = None
        claimed = 0  # trials this worker claimed since LAST was read
        while True:
            if checkpoint.stop_requested():
                self.result.reason = "stopped by SIGTERM"
                return self.result
            if self.opts.timeout is not None and time.monotonic() - started > self.opts.timeout:
                self.result.reason = "timeout"
                return self.result
            reap_due = time.monotonic() - self._last_reap >= self.opts.heartbeat_interval
            # Close to the end, read before claiming: a trial created past the budget is void.
            near_end = last is not None and total - last.live - claimed <= 2 * last.running + 4
            if last is None or reap_due or near_end:
                claimed = 0
                trials = self._trials()
                last = census(trials, total)
                if last.done >= total:
                    self.result.reason = "budget reached"
                    return self.result
                self._reap(trials)
                if not has_room(last, total):
                    last = None  # only a dead worker's or a failed trial can free a place
                    time.sleep(self.opts.poll)
                    continue
            claim = self._claim(last)
            if claim is None:  # full: wait for the running trials (or a failure) to decide
                last = None
                time.sleep(self.opts.poll)
                continue
            trial_id, number = claim
            claimed += 1
            if last.rank(number) >= total:
                # Near the end: decide on a fresh read (which also fills the study's per-trial
                # cache that the sampler reuses).
                view = self._retry(lambda: self.study._get_trials(deepcopy=False,
                                                                  use_cache=True),
                                   what="read trials")
                if not within_budget(view, number, total):
                    self._void(trial_id)
                    last = None
                    continue
                last, claimed = census(view, total), 0
            self._run_one(trial_id, number)


def run_storage_worker(study: optuna.Study, objective: Callable[[optuna.Trial], Any],
                       options: WorkerOptions) -> WorkerResult:
    """Run OBJECTIVE as one worker of STUDY until the study holds ``options.n_trials``
    complete-or-pruned trials (counted over all workers), or ``options.timeout`` passes."""
    return StorageWorker(study, objective, options).run()
