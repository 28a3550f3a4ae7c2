"""The coordinator: the only process that touches the study's sampler, pruner and storage.

It runs one event loop over its workers' messages. A trial normally costs one round trip: the
worker's request for work carries the result of its previous trial, and the reply carries the
new trial with values already sampled for every parameter the study has seen (``presample``).
A worker that dies fails its trial with the reason, the trial's parameters are queued again
(up to ``max_retries``), and a new worker takes the dead one's place.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cloudpickle
import optuna
from optuna import pruners
from optuna.distributions import BaseDistribution
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial, TrialState

from tunefleet import attrs
from tunefleet.backends import make_backend
from tunefleet.backends._base import Backend
from tunefleet.errors import WorkerStartError
from tunefleet.hub import protocol as P
from tunefleet.hub.mirror import mirrored_study
from tunefleet.hub.progress import Progress
from tunefleet.hub.worker import WorkerConfig
from tunefleet.transport._base import Link

_logger = optuna.logging.get_logger("tunefleet")

#: Samplers whose ``sample_independent`` may run at ask time for parameters the objective has
#: not asked for yet (their result depends only on the study and the parameter). Any other
#: sampler gets one round trip per parameter, exactly as in Optuna.
_PRESAMPLE_SAFE: tuple[type, ...] = tuple(
    getattr(optuna.samplers, name)
    for name in ("RandomSampler", "TPESampler", "CmaEsSampler", "QMCSampler", "GPSampler",
                 "NSGAIISampler", "NSGAIIISampler", "GridSampler")
    if hasattr(optuna.samplers, name)
)
_STATES = {P.COMPLETE: None, P.PRUNED: TrialState.PRUNED, P.FAIL: TrialState.FAIL}


def _presample_safe(sampler: optuna.samplers.BaseSampler) -> bool:
    if isinstance(sampler, optuna.samplers.PartialFixedSampler):
        return _presample_safe(sampler._base_sampler)
    return type(sampler) in _PRESAMPLE_SAFE


@dataclass
class _Running:
    trial: optuna.Trial
    link: Link
    presampled: dict[str, Any]


@dataclass
class _WorkerState:
    trial_id: int | None = None
    hello: bool = False
    finished_trials: int = 0
    space_version: int = -1  # the version of the known search space this worker holds


@dataclass
class Limits:
    """When to stop handing out trials, as ``Study.optimize`` means it."""

    n_trials: int | None
    timeout: float | None
    started: float = field(default_factory=time.monotonic)

    def time_left(self) -> bool:
        return self.timeout is None or time.monotonic() - self.started < self.timeout


class Coordinator:
    """Runs the study for the workers of one backend; see the module docstring."""

    def __init__(self, study: optuna.Study, objective: Callable[..., Any], backend: Backend, *,
                 n_workers: int, limits: Limits, callbacks: Sequence[Callable] = (),
                 catch: tuple[type[BaseException], ...] = (), max_retries: int = 1,
                 progress: Progress | None = None, setup: Callable[[], Any] | None = None) -> None:
        self.study = study
        self.backend = backend
        self.n_workers = n_workers
        self.limits = limits
        self.callbacks = list(callbacks)
        self.catch = catch
        self.max_retries = max_retries
        self.progress = progress or Progress(False, None, None, study.directions)
        self._payload = cloudpickle.dumps(
            WorkerConfig(objective, catch, len(study.directions), setup))
        self._storage = study._storage
        self._running: dict[int, _Running] = {}
        self._workers: dict[Link, _WorkerState] = {}
        self._known: dict[str, BaseDistribution] = {}
        self._known_version = 0
        self._presample = _presample_safe(study.sampler)
        self._counted = 0  # trials of this run that count against n_trials
        self._error: BaseException | None = None
        self._lost_in_a_row = 0
        self._last_loss = ""
        self._heartbeat = is_heartbeat_enabled(self._storage)
        self._next_beat = 0.0
        self._aborted: str | None = None

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Run until the limits are reached and every trial has finished; re-raise an
        objective's exception that is not in ``catch``, after stopping the workers."""
        self.study._stop_flag = False
        self._storage.set_study_system_attr(self.study._study_id, attrs.MODE, "hub")
        try:
            self.backend.start(self.n_workers)
            listener = self.backend.listener
            while not self._done():
                for link, msg in listener.poll(0.1):
                    if msg is None:
                        self._on_lost(link)
                    else:
                        self._on_message(link, msg)
                self._tick()
            if self._error is not None:
                self._abort(f"optimization stopped: {self._error!r}")
        except BaseException as exc:  # KeyboardInterrupt included: close what is running
            self._abort(f"optimization stopped: {exc!r}")
            raise
        finally:
            for link in self.backend.listener.links():
                link.send((P.STOP,))
            self.backend.shutdown(grace=2.0 if self._aborted is None else 0.0)
            self.progress.close()
        if self._error is not None:
            raise self._error

    def _may_dispatch(self) -> bool:
        return (self._error is None and not self.study._stop_flag
                and (self.limits.n_trials is None or self._counted < self.limits.n_trials)
                and self.limits.time_left())

    def _done(self) -> bool:
        return self._error is not None or (not self._running and not self._may_dispatch())

    def _tick(self) -> None:
        if self.progress.enabled:
            now = time.time()
            self.progress.running(
                (now - r.trial._cached_frozen_trial.datetime_start.timestamp()
                 for r in self._running.values()), len(self._workers))
        if self._heartbeat and self._running and time.monotonic() >= self._next_beat:
            for trial_id in self._running:
                self._storage.record_heartbeat(trial_id)
            self._next_beat = time.monotonic() + (self._storage.get_heartbeat_interval() or 60)

    # -- messages -----------------------------------------------------------------------------
    def _on_message(self, link: Link, msg: tuple) -> None:
        op = msg[0]
        state = self._workers.get(link)
        if state is None:
            state = self._workers[link] = _WorkerState()
        if op == P.NEXT:
            if msg[1] is not None:
                self._finish(link, msg[1])
                state.finished_trials += 1
                self._lost_in_a_row = 0
            self._dispatch(link, state)
        elif op == P.CALL:
            _, trial_id, ops, request = msg
            try:
                run = self._running[trial_id]
                self._apply_ops(run, ops)
                link.send((P.REPLY, True, self._answer(run, request)))
            except Exception as exc:
                link.send((P.REPLY, False, exc))
        elif op == P.OPS:
            run = self._running.get(msg[1])
            if run is not None:
                try:
                    self._apply_ops(run, msg[2])
                except Exception as exc:  # reported again, with the result, by the worker
                    _logger.warning(f"Trial {run.trial.number}: {exc}")
        elif op == P.HELLO:
            info = msg[1]
            link.name = info.get("label") or f"{info.get('host')}/{info.get('pid')}"
            state.hello = True
            link.send((P.CONFIG, self._payload))
        elif op == P.FAILED:
            self._error = WorkerStartError(msg[1])
        else:
            _logger.warning(f"ignoring unknown message {op!r} from worker {link.name}")

    def _dispatch(self, link: Link, state: _WorkerState) -> None:
        if not self._may_dispatch():
            link.send((P.STOP,))
            state.trial_id = None
            return
        if self._heartbeat:
            optuna.storages.fail_stale_trials(self.study)
        trial = self.study.ask()
        self._counted += 1
        trial_id = trial._trial_id
        presampled = self._sample_known(trial)
        # One write on the hot path: the report reads the host from "host/pid", and the
        # trial's times from datetime_start/complete, which the coordinator sets as it hands
        # the trial out and as the result comes in.
        self._storage.set_trial_system_attr(trial_id, attrs.WORKER, link.name)
        self._running[trial_id] = _Running(trial, link, presampled)
        state.trial_id = trial_id
        frozen = trial._cached_frozen_trial
        space = None
        if presampled and state.space_version != self._known_version:
            space, state.space_version = dict(self._known), self._known_version
        link.send((P.TRIAL, trial_id, frozen.number, frozen.datetime_start, trial._fixed_params,
                   presampled, space, frozen.user_attrs))

    def _learn(self, name: str, dist: BaseDistribution) -> None:
        if self._known.get(name) != dist:
            self._known[name] = dist
            self._known_version += 1

    def _sample_known(self, trial: optuna.Trial) -> dict[str, Any]:
        """Values for the parameters seen so far, drawn as ``Trial._suggest`` would draw them;
        the worker uses those its objective asks for with the same distribution. The
        distributions travel only when the known space changes (see ``_dispatch``)."""
        if not self._presample or not self._known:
            return {}
        out: dict[str, Any] = {}
        fixed = trial._fixed_params
        frozen = None
        filtered = None
        for name, dist in self._known.items():
            if name in fixed or dist.single():
                continue
            if trial._is_relative_param(name, dist):
                out[name] = trial.relative_params[name]
                continue
            if frozen is None:
                frozen = trial._get_latest_trial()
                filtered = pruners._filter_study(self.study, frozen)
            out[name] = self.study.sampler.sample_independent(filtered, frozen, name, dist)
        return out

    def _apply_ops(self, run: _Running, ops: list) -> None:
        trial = run.trial
        cached = trial._cached_frozen_trial
        for op in ops:
            kind = op[0]
            if kind == "param":
                _, name, dist, value = op
                if name not in cached.distributions:
                    self._storage.set_trial_param(trial._trial_id, name,
                                                  dist.to_internal_repr(value), dist)
                    cached.distributions[name] = dist
                    cached.params[name] = value
                    self._learn(name, dist)
            elif kind == "report":
                trial.report(op[2], op[1])
            elif kind == "user_attr":
                trial.set_user_attr(op[1], op[2])
            elif kind == "constraint":
                trial.set_constraint(op[1], op[2])

    def _answer(self, run: _Running, request: tuple) -> Any:
        kind = request[0]
        if kind == P.SUGGEST:
            _, name, dist = request
            value = run.trial._suggest(name, dist)
            self._learn(name, dist)
            return value
        if kind == P.PRUNE:
            return run.trial.should_prune()
        if kind == P.STUDY_GET:
            return getattr(self.study, request[1])
        if kind == P.STUDY_CALL:
            _, name, args, kwargs = request
            return getattr(self.study, name)(*args, **kwargs)
        raise ValueError(f"unknown request {kind!r}")

    # -- ends of trials -------------------------------------------------------------------------
    def _finish(self, link: Link, result: tuple) -> None:
        trial_id, state_name, values, ops, error = result
        run = self._running.pop(trial_id, None)
        state = self._workers.get(link)
        if state is not None:
            state.trial_id = None
        if run is None:
            return  # already failed by an abort
        try:
            self._apply_ops(run, ops)
        except Exception as exc:  # as if raised by the objective, like in Optuna
            import traceback

            state_name, values = P.FAIL, None
            error = (exc, repr(exc), traceback.format_exc(), isinstance(exc, self.catch))
        self._tell(run, _STATES[state_name], values, error)

    def _tell(self, run: _Running, state: TrialState | None, values: Any,
              error: tuple | None) -> None:
        trial = run.trial
        if error is not None and state == TrialState.FAIL:
            self._storage.set_trial_system_attr(trial._trial_id, attrs.FAIL_REASON, error[1])
        updated, out_values, warning = _tell_with_warning(
            study=self.study, trial=trial, value_or_values=values, state=state,
            suppress_warning=True)
        number, params = trial.number, trial._cached_frozen_trial.params
        if updated == TrialState.COMPLETE:
            self.study._log_completed_trial(out_values, number, params)
        elif updated == TrialState.PRUNED:
            _logger.info(f"Trial {number} pruned. {error[1] if error else ''}")
        elif error is not None:
            _logger.warning(f"Trial {number} failed with parameters: {params} because of the "
                            f"following error: {error[1]}.\n{error[2] or ''}".rstrip())
        else:
            _logger.warning(f"Trial {number} failed with parameters: {params} because of the "
                            f"following error: {warning}.")
        self._after_trial(trial, updated, out_values)
        if updated == TrialState.FAIL and error is not None and not error[3]:
            self._error = error[0] if error[0] is not None else RuntimeError(
                f"objective failed in trial {number}: {error[1]}\n{error[2] or ''}".rstrip())

    def _after_trial(self, trial: optuna.Trial, state: TrialState, values: Any) -> None:
        if self.callbacks:
            frozen: FrozenTrial = self._storage.get_trial(trial._trial_id)
            for callback in self.callbacks:
                callback(self.study, copy.deepcopy(frozen))
        if self.progress.enabled:
            started = trial._cached_frozen_trial.datetime_start
            self.progress.trial_done(state, values, time.time() - started.timestamp())

    def _on_lost(self, link: Link) -> None:
        state = self._workers.pop(link, None)
        reason = link.exit_reason()
        self.backend.on_lost(link)
        if state is not None and state.trial_id is not None:
            run = self._running.pop(state.trial_id, None)
            if run is not None:
                self._fail_lost(run, reason)
        if state is None or state.finished_trials == 0:
            self._lost_in_a_row += 1
            self._last_loss = reason
        if self._lost_in_a_row > max(3, self.n_workers) + self.max_retries and self._error is None:
            self._error = WorkerStartError(
                f"workers keep dying before finishing a trial; last: {reason}")
        if self._may_dispatch() or self._running:
            if self.backend.starts_workers and self._may_dispatch():
                self.backend.replace(link)

    def _fail_lost(self, run: _Running, reason: str) -> None:
        """Fail a trial whose worker is gone and queue its parameters again."""
        trial = run.trial
        trial_id = trial._trial_id
        _logger.warning(f"Trial {trial.number} failed: {reason}.")
        self._storage.set_trial_system_attr(trial_id, attrs.FAIL_REASON, reason)
        retry = int(trial._cached_frozen_trial.system_attrs.get(attrs.RETRY_COUNT, 0))
        params = dict(run.presampled)
        params.update(trial._fixed_params)
        params.update(trial._cached_frozen_trial.params)
        self.study.tell(trial, state=TrialState.FAIL)
        if retry < self.max_retries and self._error is None:
            self.study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs={"fixed_params": params, attrs.RETRY_OF: trial.number,
                              attrs.RETRY_COUNT: retry + 1},
                user_attrs=dict(trial._cached_frozen_trial.user_attrs)))
            self._counted -= 1  # the retry takes this trial's place in the budget
        self._after_trial(trial, TrialState.FAIL, None)

    def _abort(self, reason: str) -> None:
        """Close every running trial as FAIL, so that nothing is left RUNNING."""
        self._aborted = reason
        for trial_id, run in list(self._running.items()):
            try:
                self._storage.set_trial_system_attr(trial_id, attrs.FAIL_REASON, reason)
                self.study.tell(run.trial, state=TrialState.FAIL)
            except Exception as exc:  # the storage itself may be what failed
                _logger.warning(f"could not close trial {run.trial.number}: {exc}")
        self._running.clear()


def run_hub(study: optuna.Study, objective: Callable[..., Any], *, n_trials: int | None,
            n_workers: int | None, timeout: float | None, callbacks: list[Callable],
            catch: Any, show_progress_bar: bool, gpus: list | None, max_retries: int,
            backend: str, setup: Callable[[], Any] | None,
            backend_options: dict[str, Any]) -> optuna.Study:
    """What ``tunefleet.optimize`` does; see there."""
    if isinstance(catch, type):
        catch = (catch,)
    catch = tuple(catch)
    if n_trials is not None and n_trials < 0:
        raise ValueError(f"n_trials must be non-negative, got {n_trials}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be non-negative, got {max_retries}")
    if study._thread_local.in_optimize_loop:
        raise RuntimeError("Nested invocation of `Study.optimize` method isn't allowed.")
    options = dict(backend_options)
    if gpus is not None:
        options["gpus"] = gpus
    engine = make_backend(backend, **options)
    workers = n_workers if n_workers is not None else engine.default_workers()
    if workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {workers}")
    if n_trials is not None:
        workers = max(1, min(workers, n_trials)) if engine.starts_workers else workers
    progress = Progress(show_progress_bar, n_trials, timeout, study.directions)
    # The coordinator is the only writer: it works on an in-memory copy of a database or
    # journal study, and a background thread writes every change through, in order.
    run_study, mirror = mirrored_study(study)
    coordinator = Coordinator(run_study, objective, engine, n_workers=workers,
                              limits=Limits(n_trials, timeout), callbacks=callbacks, catch=catch,
                              max_retries=max_retries, progress=progress, setup=setup)
    study._thread_local.in_optimize_loop = run_study._thread_local.in_optimize_loop = True
    try:
        coordinator.run()
    finally:
        study._thread_local.in_optimize_loop = run_study._thread_local.in_optimize_loop = False
        if mirror is not None:
            if sys.exc_info()[1] is None:
                mirror.close()  # waits for the durable storage; raises MirrorError on failure
            else:
                try:
                    mirror.close()
                except Exception as exc:  # do not hide the run's own error
                    _logger.warning(f"{exc}")
    return study
