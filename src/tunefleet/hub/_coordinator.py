"""The coordinator: the only process that touches the study's sampler, pruner and storage.

It runs one event loop over its workers' messages (``hub/_protocol.py``). A trial normally
costs one round trip: the worker's request for work carries the result of its previous trial,
and the reply carries the new trial with values already drawn for every parameter the study
has seen (``hub/_drawing.py``). A worker that dies or falls silent fails its trial with the
reason, the trial's retry is queued (``tunefleet/_retry.py``, up to ``max_retries``), and the
fleet starts a new worker in the dead one's place (``hub/_fleet.py``). A trial counts as ended
only once the durable storage holds it (``hub/_mirror``).
"""

from __future__ import annotations

import copy
import functools
import time
from collections import deque
from typing import Any, Callable, Sequence

import cloudpickle
import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet import _attrs as attrs
from tunefleet._optuna import is_heartbeat_enabled, tell_with_warning
from tunefleet._retry import lineage, retry_of
from tunefleet.errors import Interrupted, WorkerStartError
from tunefleet.hub import _protocol as P
from tunefleet.hub._checkpoints import CheckpointKeeper
from tunefleet.hub._drawing import Drawer
from tunefleet.hub._fleet import Fleet
from tunefleet.hub._mirror import MirroredStorage
from tunefleet.hub._ownership import recover_orphans
from tunefleet.hub._progress import Progress
from tunefleet.hub._requests import answer, apply_ops, ops_not_stored
from tunefleet.hub._signals import StopSignals
from tunefleet.hub._state import (Limits, _Ended, _Running, _WorkerState, drain, log_ended,
                                  say)
from tunefleet.hub._worker import WorkerConfig
from tunefleet.transport import Link

# Under Optuna's logger: optuna.logging.set_verbosity governs it, in Optuna's format.
_logger = optuna.logging.get_logger("optuna.tunefleet")

_STATES = {P.COMPLETE: None, P.PRUNED: TrialState.PRUNED, P.FAIL: TrialState.FAIL}


class Coordinator:
    """Runs the study for the workers of one fleet; see the module docstring."""

    def __init__(self, study: optuna.Study, objective: Callable[..., Any], fleet: Fleet, *,
                 n_workers: int, limits: Limits, callbacks: Sequence[Callable] = (),
                 catch: tuple[type[BaseException], ...] = (), max_retries: int = 1,
                 progress: Progress | None = None, setup: Callable[[], Any] | None = None,
                 mirror: MirroredStorage | None = None, grace: float = 5.0,
                 worker_timeout: float | None = None, orphans: Sequence[int] = (),
                 reclaim_window: float = 0.0, seed: int | None = None,
                 deterministic: bool = False,
                 checkpoints: CheckpointKeeper | None = None) -> None:
        self.study = study
        self.fleet = fleet
        self.n_workers = n_workers
        self.limits = limits
        self.callbacks = list(callbacks)
        self.catch = catch
        self.max_retries = max_retries
        self.progress = progress or Progress(False, None, None, study.directions)
        self.mirror = mirror
        self.worker_timeout = worker_timeout
        self.checkpoints = checkpoints
        self._storage = study._storage
        self._payload = cloudpickle.dumps(WorkerConfig(
            objective, catch, len(study.directions), setup, grace,
            str(checkpoints.root) if checkpoints is not None and checkpoints.root else None))
        # --deterministic: trial k waits for every trial numbered k - n_workers or lower, and
        # its sampler and pruner see only those (see hub/_ordered.py).
        self.drawer = Drawer(study, seed, n_workers if deterministic else 0)
        self.signals = StopSignals(grace, self._on_first_signal)
        self._running: dict[int, _Running] = {}
        self._workers: dict[Link, _WorkerState] = {}
        # Trials a dead coordinator left RUNNING, by number: a worker that outlived it may
        # bring their results back (Hello.reclaim) until the window closes; then they are
        # failed and retried. Each holds its place in the budget meanwhile.
        self._orphans = {self._storage.get_trial_number_from_id(t): t for t in orphans}
        self._reclaim_until = time.monotonic() + reclaim_window
        self._silenced: dict[int, str] = {}  # trial id -> why it was failed (silent worker)
        self._next_silence_check = 0.0
        self._counted = len(self._orphans)  # trials of this run that count against n_trials
        self._error: BaseException | None = None
        self._let_running_end = False  # an objective's error: as in Optuna, they end first
        self._lost_in_a_row = 0
        self._heartbeat = is_heartbeat_enabled(self._storage)
        self._next_beat = 0.0
        self._aborted: str | None = None
        self._unannounced: deque[_Ended] = deque()
        self._parked: list[Link] = []  # workers waiting for a trial while the storage catches up
        # Held until the storage holds change ``seq``: (seq, link, None), a worker waiting for
        # its last trial's callbacks (which run once it is stored) before its next trial, as a
        # thread of Study.optimize does (a callback that stops the study, MaxTrialsCallback,
        # stops it before they start another); (seq, link, reply), a reply that confirms it.
        self._awaiting: list[tuple[int, Link, bytes | None]] = []
        self._held: list[Link] = []  # --deterministic: waiting for the trials before theirs
        # Workers that joined by themselves, kept (not told to stop) while trials still run:
        # a retry may come, and no fleet would start a worker for it.
        self._idle: list[Link] = []
        self._handlers: dict[type, Callable[[Link, _WorkerState, Any], None]] = {
            P.Next: self._on_next, P.Call: self._on_call, P.Ops: self._on_ops,
            P.Beat: lambda link, state, msg: None, P.Hello: self._on_hello,
            P.Failed: self._on_failed}

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Run until the limits are reached and every trial has finished and is stored;
        re-raise an objective's exception that is not in ``catch``, after stopping the workers.
        SIGINT / SIGTERM stop handing out trials, give running trials ``grace`` seconds, then
        close them as FAIL and raise :class:`~tunefleet.errors.Interrupted`."""
        self.study._stop_flag = False
        self._storage.set_study_system_attr(self.study._study_id, attrs.MODE, "hub")
        self.signals.install()
        try:
            self.fleet.start(self.n_workers)
            listener = self.fleet.listener
            while not self._done():
                ahead = self._wants_ahead()
                messages = listener.poll(0.0 if ahead else (
                    0.005 if self._waiting_on_storage() else 0.1))
                for link, raw in messages:
                    if raw is None:
                        self._on_lost(link)
                    else:
                        self._on_message(link, raw)
                if ahead and not messages:
                    self.drawer.draw_ahead()  # nothing to answer: draw the next trial's values
                self._tick()
            self._settle_orphans(force=True)
            if self._error is not None:
                self._abort(f"optimization stopped: {self._error!r}")
            elif self.signals.signum is not None:
                self._abort(f"interrupted by {self.signals.name}")
        except BaseException as exc:  # KeyboardInterrupt included: close what is running
            self._abort(f"optimization stopped: {exc!r}")
            raise
        finally:
            stop = self._stop()
            for link in self.fleet.listener.links():
                link.send(stop)
            self.fleet.shutdown(grace=2.0 if self._aborted is None else 0.0)
            try:
                self._drain()
            finally:
                self.progress.close()
                self.signals.restore()
        if self._error is not None:
            raise self._error
        if self.signals.signum is not None:
            raise Interrupted(self.signals.signum)

    def _on_first_signal(self, signum: int) -> None:
        n = len(self._running)
        grace = self.signals.grace
        say(f"{self.signals.name}: no new trials; "
            + (f"waiting up to {grace:g} s for {n} running trial(s) "
               "(Ctrl-C again to stop them now)" if n else "stopping"))

    def _drain(self) -> None:
        """Wait until the durable storage holds everything, then count what it holds."""
        if self.mirror is not None:
            drain(self.mirror, self._announce)
        self._announce()

    def _may_dispatch(self) -> bool:
        return (self._error is None and not self.study._stop_flag and self.signals.signum is None
                and (self.limits.n_trials is None or self._counted < self.limits.n_trials)
                and self.limits.time_left())

    def _wants_ahead(self) -> bool:
        """Whether to draw the next trial's values now, never more than the budget can use."""
        room = None if self.limits.n_trials is None else self.limits.n_trials - self._counted
        return self.drawer.wants_ahead(room) and self._may_dispatch()

    def _storage_behind(self) -> bool:
        """Hold back new trials while the durable storage is more than ~0.1 s behind."""
        return self.mirror is not None and self.mirror.lag() > 0.1

    def _durable_seq(self) -> int | None:
        """How many changes the durable storage holds (None: the study has no durable one)."""
        return self.mirror.durable_seq if self.mirror is not None else None

    def _waiting_on_storage(self) -> bool:
        return bool(self._unannounced or self._parked or self._awaiting
                    or (self.checkpoints is not None and self.checkpoints.uploading))

    def _done(self) -> bool:
        if self._error is not None and not self._let_running_end:
            return True
        if self.signals.signum is not None and self.signals.grace_over():
            return True
        return (not self._running and not self._unannounced and not self._orphans
                and not self._may_dispatch())

    def _tick(self) -> None:
        self._settle_orphans()
        if self._error is None or self._let_running_end:
            if self.mirror is not None and self.mirror.error is not None:
                self._error, self._let_running_end = self.mirror.error, False  # nothing counts
            elif self._error is None:
                failure = self.fleet.failure()
                if failure is not None:
                    self._error = WorkerStartError(failure)
        self._announce()
        if self.checkpoints is not None and self.checkpoints.uploading:
            for link, error in self.checkpoints.uploaded():  # indexed: stored, then answered
                self._reply_once_stored(link, P.Reply(error is None, error))
        if self._awaiting:
            self._release_awaiting()
        if self._parked and not self._storage_behind():
            parked, self._parked = self._parked, []
            self._dispatch_again(parked)
        if self._held and (self._history_ready() or not self._may_dispatch()):
            held, self._held = self._held, []
            self._dispatch_again(held)
        if self._idle and (self._may_dispatch() or not (self._running or self._orphans)):
            idle, self._idle = self._idle, []
            self._dispatch_again(idle)  # a retry to run, or the end: Stop
        if self.progress.enabled:
            now = time.time()
            self.progress.running(
                (now - r.trial._cached_frozen_trial.datetime_start.timestamp()
                 for r in self._running.values()), len(self._workers))
        if self.worker_timeout and self._running and time.monotonic() >= self._next_silence_check:
            self._fail_silent()
        if self._heartbeat and self._running and time.monotonic() >= self._next_beat:
            for trial_id in self._running:
                self._storage.record_heartbeat(trial_id)
            self._next_beat = time.monotonic() + (self._storage.get_heartbeat_interval() or 60)

    def _dispatch_again(self, links: list[Link]) -> None:
        """Workers that were kept waiting for a trial (still connected ones) ask again."""
        for link in links:
            state = self._workers.get(link)
            if state is not None:
                self._dispatch(link, state)

    def _reclaim(self, link: Link, number: int, result: P.Result) -> None:
        """A worker that outlived the previous coordinator brings the result of trial
        ``number``: the trial keeps its number and gets the result, as if never interrupted."""
        trial_id = self._orphans.pop(number, None)
        if trial_id is None:  # not an orphan: already finished, failed when the window closed,
            if result.trial_id not in self._running:  # or failed as silent (refused there)
                self._finish(link, result)
            return
        trial = optuna.Trial(self.study, trial_id)
        frozen = trial._cached_frozen_trial
        self._running[trial_id] = _Running(trial, link, {}, lineage(frozen))
        _logger.info(f"Trial {number}: result reclaimed from worker {link.name}")
        self._finish(link, result._replace(trial_id=trial_id, ops=ops_not_stored(frozen,
                                                                               result.ops)))

    def _settle_orphans(self, force: bool = False) -> None:
        """Close the reclaim window: fail the orphans nobody brought back, and retry them."""
        if not self._orphans or (not force and time.monotonic() < self._reclaim_until):
            return
        orphans, self._orphans = list(self._orphans.values()), {}
        recover_orphans(self.study, orphans, self.max_retries)
        # Each orphan held a place in the budget: its retry (queued WAITING) takes it now.
        self._counted -= len(orphans)

    def _fail_silent(self) -> None:
        """Fail and retry the trial of each worker silent for ``worker_timeout`` (stopped,
        hung, cut off): workers beat every second while a trial runs. The worker is ended
        (``Fleet.kill``) and its place taken; a late result it brings back when it joins
        again over TCP is refused (see ``_reclaim`` and ``_finish``)."""
        now = time.monotonic()
        self._next_silence_check = now + min(1.0, self.worker_timeout / 4)
        for link, state in list(self._workers.items()):
            if state.trial_id is None or now - state.heard <= self.worker_timeout:
                continue
            run = self._running.pop(state.trial_id, None)
            trial_id, state.trial_id = state.trial_id, None
            if run is not None:
                reason = (f"worker {link.name} was silent for {now - state.heard:.0f} s "
                          f"(worker_timeout {self.worker_timeout:g} s)")
                self._silenced[trial_id] = reason
                self._fail_lost(run, reason)
            # Ended (SIGKILL, or its connection dropped), counted lost: its place is taken.
            self.fleet.kill(link)
            self._on_lost(link)

    def _announce(self) -> None:
        """Count the trials the durable storage now holds: callbacks, progress, best value."""
        durable = self._durable_seq()
        while self._unannounced and (durable is None or self._unannounced[0].seq <= durable):
            ended = self._unannounced.popleft()
            self._after_trial(ended.trial, ended.state, ended.values, ended.callbacks,
                              ended.continued, ended.log)

    # -- messages -----------------------------------------------------------------------------
    def _on_message(self, link: Link, raw: tuple) -> None:
        state = self._workers.get(link)
        if state is None:
            state = self._workers[link] = _WorkerState()
        state.heard = time.monotonic()
        try:
            msg = P.decode(raw)
            handler = self._handlers[type(msg)]
        except (ValueError, KeyError):
            _logger.warning(f"ignoring a message that is not for the coordinator from worker "
                            f"{link.name}: {str(raw)[:80]}")
            return
        handler(link, state, msg)

    def _on_next(self, link: Link, state: _WorkerState, msg: P.Next) -> None:
        if msg.result is not None:
            self._finish(link, msg.result)
            state.finished_trials += 1
            state.unstored.append(self.mirror.seq if self.mirror is not None else 0)
            self._lost_in_a_row = 0
        if msg.leaving:  # stopped (SIGTERM): no new trial; the fleet replaces it when it exits
            link.send(self._stop())
            return
        if msg.result is not None and self.callbacks and self._unannounced:
            self._awaiting.append((self.mirror.seq, link, None))  # else nothing is unannounced
            self.mirror.hurry()
            return
        self._dispatch(link, state)

    def _release_awaiting(self) -> None:
        """Workers whose last trial is stored and announced (its callbacks ran) ask again, and
        replies held until the storage holds what they confirm are sent."""
        durable = self._durable_seq()
        if durable is not None and self._awaiting[0][0] > durable:
            return  # (changes are stored in order, and held in order)
        ready = [a for a in self._awaiting if durable is None or a[0] <= durable]
        self._awaiting = self._awaiting[len(ready):]
        for _, link, reply in ready:  # (a worker lost meanwhile has none: see _on_lost)
            if reply is not None:
                link.send(reply)
        self._dispatch_again([link for _, link, reply in ready if reply is None])

    def _on_call(self, link: Link, state: _WorkerState, msg: P.Call) -> None:
        try:
            run = self._running[msg.trial_id]
            self._apply_ops(run, msg.ops)
            reply = P.Reply(True, self._answer(run, msg.request))
        except Exception as exc:
            reply = P.Reply(False, exc)
        if reply.ok and type(msg.request) is P.CkptCommit and self.checkpoints.indexed:
            # Uploaded on the keeper's thread, then indexed in a study attribute: the save
            # returns once the storage holds it (_tick).
            self.checkpoints.reply_when_uploaded(reply.value, link)
            return
        link.send(P.encode(reply))

    def _reply_once_stored(self, link: Link, reply: P.Reply) -> None:
        if link not in self._workers:
            return  # lost meanwhile
        if self.mirror is None or not reply.ok:
            link.send(P.encode(reply))
            return
        self._awaiting.append((self.mirror.seq, link, P.encode(reply)))
        self.mirror.hurry()

    def _on_ops(self, link: Link, state: _WorkerState, msg: P.Ops) -> None:
        run = self._running.get(msg.trial_id)
        if run is not None:
            try:
                self._apply_ops(run, msg.ops)
            except Exception as exc:  # reported again, with the result, by the worker
                _logger.warning(f"Trial {run.trial.number}: {exc}")

    def _on_hello(self, link: Link, state: _WorkerState, msg: P.Hello) -> None:
        link.name = msg.label or f"{msg.host}/{msg.pid}"
        state.hello = True
        self.fleet.on_hello(link)
        link.send(P.encode(P.Config(self._payload)))
        for number, result in msg.reclaim:
            self._reclaim(link, number, result)

    def _stop(self) -> tuple:
        """The encoded ``Stop`` for a worker: with the error the study stopped on, if any."""
        error = self._error
        return P.encode(P.Stop(None if error is None else
                               f"{type(error).__name__}: {error}"[:2000]))

    def _on_failed(self, link: Link, state: _WorkerState, msg: P.Failed) -> None:
        self._error = WorkerStartError(msg.message)

    def _dispatch(self, link: Link, state: _WorkerState) -> None:
        if not self._may_dispatch():
            state.trial_id = None
            # Kept while trials run or orphans wait for the reclaim window: a retry may need a
            # worker then (told to stop, they had left a restarted serve waiting for ever).
            if (self._running or self._orphans) and not self.fleet.starts_workers \
                    and self._error is None:
                self._idle.append(link)
            else:
                link.send(self._stop())
            return
        if self._storage_behind():
            state.trial_id = None
            self._parked.append(link)
            return
        if self.drawer.window and not self._history_ready():
            state.trial_id = None
            self._held.append(link)
            return
        if self._heartbeat:
            optuna.storages.fail_stale_trials(self.study)
        trial = self.drawer.ask()
        self._counted += 1
        trial_id = trial._trial_id
        presampled = self.drawer.sample_known(trial)
        # One write on the hot path: the report reads the host from "host/pid", and the times
        # from datetime_start/complete, set as the trial is handed out and as its result comes.
        self._storage.set_trial_system_attr(trial_id, attrs.WORKER, link.name)
        frozen = trial._cached_frozen_trial
        first = lineage(frozen)
        self._running[trial_id] = _Running(trial, link, presampled, first)
        state.trial_id = trial_id
        space = None
        if presampled and state.space_version != self.drawer.version:
            space, state.space_version = dict(self.drawer.known), self.drawer.version
        link.send(P.encode(P.NewTrial(trial_id, frozen.number, frozen.datetime_start,
                                      trial._fixed_params, presampled, space, frozen.user_attrs,
                                      first, state.stored(self._durable_seq()))))

    def _history_ready(self) -> bool:
        unfinished = [r.trial.number for r in self._running.values()]
        return self.drawer.history_ready(unfinished + list(self._orphans))

    def _apply_ops(self, run: _Running, ops: list[P.Op]) -> None:
        apply_ops(self._storage, self.drawer, run, ops)

    def _answer(self, run: _Running, request: P.Request) -> Any:
        return answer(self.study, self._storage, self.drawer, self.checkpoints, run, request)

    # -- ends of trials -------------------------------------------------------------------------
    def _finish(self, link: Link, result: P.Result) -> None:
        run = self._running.pop(result.trial_id, None)
        state = self._workers.get(link)
        if state is not None:
            state.trial_id = None
        if run is None:  # already failed: by an abort, or because its worker fell silent
            why = self._silenced.pop(result.trial_id, None)
            if why is not None:
                _logger.warning(f"late result from worker {link.name} refused: its trial was "
                                f"failed and retried because the {why[len('worker '):]}")
            return
        state_name, values, error = result.state, result.values, result.error
        try:
            self._apply_ops(run, result.ops)
        except Exception as exc:  # as if raised by the objective, like in Optuna
            import traceback

            state_name, values = P.FAIL, None
            error = P.Error(exc, repr(exc), traceback.format_exc(), isinstance(exc, self.catch))
        if state_name == P.PREEMPTED:
            self._hand_back(run, f"worker {link.name} was stopped and handed the trial back")
            return
        self._tell(run, _STATES[state_name], values, error)

    def _tell(self, run: _Running, state: TrialState | None, values: Any,
              error: P.Error | None) -> None:
        trial = run.trial
        if error is not None and state == TrialState.FAIL:
            self._storage.set_trial_system_attr(trial._trial_id, attrs.FAIL_REASON, error.text)
        try:
            updated, out_values, warning = tell_with_warning(
                study=self.study, trial=trial, value_or_values=values, state=state,
                suppress_warning=True)
        except Exception as exc:  # a value Optuna cannot even check ("12"): FAIL, go on
            warning = (f"The objective returned {values!r}, which is not a valid value: "
                       f"{type(exc).__name__}: {exc}")
            self._storage.set_trial_system_attr(trial._trial_id, attrs.FAIL_REASON, warning)
            self.study.tell(trial, state=TrialState.FAIL)
            updated, out_values = TrialState.FAIL, None
        number, params = trial.number, trial._cached_frozen_trial.params

        log = functools.partial(log_ended, self.study, updated, out_values, number, params,
                                error, warning)
        stops = updated == TrialState.FAIL and error is not None and not error.caught
        if self.checkpoints is not None:  # the trial ended for good: its checkpoints go
            self.checkpoints.trial_ended(trial._trial_id, run.lineage, for_good=True)
        # As in Optuna, an exception that stops the study is not passed to callbacks.
        self._count(trial, updated, out_values, callbacks=not stops, log=log)
        if stops:
            self._error = error.exc if error.exc is not None else RuntimeError(
                f"objective failed in trial {number}: {error.text}\n{error.traceback or ''}"
                .rstrip())
            if self._running:  # as Study.optimize's other threads, they finish first
                self._let_running_end, n = True, len(self._running)
                _logger.info(f"Trial {number} raised: stopping once {n} running trial(s) end")

    def _count(self, trial: optuna.Trial, state: TrialState, values: Any, *,
               callbacks: bool = True, continued: bool = False,
               log: Callable[[], None] | None = None) -> None:
        """Count ``trial`` as ended once the durable storage holds its end (at once when the
        study's storage is not mirrored): its log line, callbacks, progress. A ``continued``
        trial (a retry goes on with it) is shown once: by its continuation."""
        if self.mirror is None:
            self._after_trial(trial, state, values, callbacks, continued, log)
        else:
            self._unannounced.append(_Ended(self.mirror.seq, trial, state, values, callbacks,
                                            continued, log))

    def _after_trial(self, trial: optuna.Trial, state: TrialState, values: Any,
                     callbacks: bool = True, continued: bool = False,
                     log: Callable[[], None] | None = None) -> None:
        if log is not None:
            log()
        if self.callbacks and callbacks:
            frozen: FrozenTrial = self._storage.get_trial(trial._trial_id)
            for callback in self.callbacks:
                callback(self.study, copy.deepcopy(frozen))
        if self.progress.enabled:
            if continued:
                self.progress.resumed()
                return
            started = trial._cached_frozen_trial.datetime_start
            self.progress.trial_done(state, values, time.time() - started.timestamp())

    def _on_lost(self, link: Link) -> None:
        state = self._workers.pop(link, None)
        if link in self._parked:
            self._parked.remove(link)
        if link in self._idle:
            self._idle.remove(link)
        self._awaiting = [a for a in self._awaiting if a[1] is not link]
        reason = link.exit_reason()
        self.fleet.on_lost(link)
        if state is not None and state.trial_id is not None:
            run = self._running.pop(state.trial_id, None)
            if run is not None:
                self._fail_lost(run, reason)
        if state is None or state.finished_trials == 0:
            self._lost_in_a_row += 1
        if self._lost_in_a_row > max(3, self.n_workers) + self.max_retries and self._error is None:
            self._error = WorkerStartError(
                f"workers keep dying before finishing a trial; last: {reason}")
        if self.fleet.starts_workers and self._may_dispatch():
            self.fleet.replace(link)

    def _fail_lost(self, run: _Running, reason: str, *, handed_back: bool = False) -> None:
        """Fail a trial whose worker is gone and queue its retry, which continues from the
        trial's last checkpoint. A trial handed back (its worker was stopped: a preemption)
        uses up no retry and is no failure of the objective."""
        trial = run.trial
        if handed_back:
            _logger.info(f"Trial {trial.number} handed back: {reason}.")
        else:
            _logger.warning(f"Trial {trial.number} failed: {reason}.")
        self._storage.set_trial_system_attr(trial._trial_id, attrs.FAIL_REASON, reason)
        retry = retry_of(trial._cached_frozen_trial, self.max_retries, run.presampled,
                         handed_back=handed_back)
        self.study.tell(trial, state=TrialState.FAIL)
        queued = retry is not None and self._error is None
        if queued:
            self.study.add_trial(retry)
            self._counted -= 1  # the retry takes this trial's place in the budget
        if self.checkpoints is not None:
            self.checkpoints.trial_ended(trial._trial_id, run.lineage, for_good=not queued)
        self._count(trial, TrialState.FAIL, None, continued=queued)

    def _hand_back(self, run: _Running, reason: str) -> None:
        self._fail_lost(run, reason, handed_back=True)

    def _abort(self, reason: str) -> None:
        """Close every running trial as FAIL, so that nothing is left RUNNING. Stopped by a
        signal, a trial that saved a checkpoint is queued again: the next run continues it."""
        self._aborted = reason
        interrupted = self.signals.signum is not None and self._error is None
        for trial_id, run in list(self._running.items()):
            try:
                self._storage.set_trial_system_attr(trial_id, attrs.FAIL_REASON, reason)
                if interrupted and self.checkpoints is not None \
                        and self.checkpoints.has(run.lineage):
                    retry = retry_of(run.trial._cached_frozen_trial, self.max_retries,
                                     run.presampled, handed_back=True)
                    self.study.tell(run.trial, state=TrialState.FAIL)
                    self.study.add_trial(retry)
                    continue
                self.study.tell(run.trial, state=TrialState.FAIL)
                if self.checkpoints is not None:
                    self.checkpoints.trial_ended(trial_id, run.lineage, for_good=True)
            except Exception as exc:  # the storage itself may be what failed
                _logger.warning(f"could not close trial {run.trial.number}: {exc}")
        self._running.clear()
        # A trial the sampler failed on while it was being handed out (``ask`` raised after
        # creating it) is in no worker's hands: this coordinator owns the study, so any trial
        # still RUNNING is one of those.
        try:
            stray = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except Exception:
            stray = []
        for frozen in stray:
            try:
                self._storage.set_trial_system_attr(frozen._trial_id, attrs.FAIL_REASON, reason)
                self._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
            except Exception as exc:
                _logger.warning(f"could not close trial {frozen.number}: {exc}")
