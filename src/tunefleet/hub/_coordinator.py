"""The coordinator: the only process that touches the study's sampler, pruner and storage.

It runs one event loop over its workers' messages. A trial normally costs one round trip: the
worker's request for work carries the result of its previous trial, and the reply carries the
new trial with values already sampled for every parameter the study has seen (``presample``).
A worker that dies fails its trial with the reason, the trial's parameters are queued again
(up to ``max_retries``), and a new worker takes the dead one's place.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cloudpickle
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from tunefleet import _attrs as attrs
from tunefleet._optuna import (FAST_TPE, filter_study, is_heartbeat_enabled, log_completed_trial,
                               tell_with_warning)
from tunefleet.backends import make_backend
from tunefleet.backends._base import Backend
from tunefleet.errors import Interrupted, UsageError, WorkerStartError
from tunefleet.hub import _protocol as P
from tunefleet.hub._beat import BEAT_INTERVAL
from tunefleet.hub._ordered import HistoryView
from tunefleet.hub._mirror import MirroredStorage, mirrored_study
from tunefleet.hub._progress import Progress
from tunefleet.hub._worker import WorkerConfig
from tunefleet.samplers._seeded import Reseeder, random_states
from tunefleet.transport._base import Link

# Under Optuna's logger: optuna.logging.set_verbosity governs it, in Optuna's format.
_logger = optuna.logging.get_logger("optuna.tunefleet")

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


def _say(message: str) -> None:
    """One line for the person at the terminal, below the progress bar if there is one."""
    from tqdm import tqdm

    tqdm.write(f"tunefleet: {message}", file=sys.stderr)


def _spec_seed(study: optuna.Study) -> int | None:
    """The --seed a study was made with on the command line (its recorded spec), if any."""
    from tunefleet._studies import SPEC_ATTR

    raw = study._storage.get_study_system_attrs(study._study_id).get(SPEC_ATTR)
    try:
        seed = json.loads(raw).get("seed") if raw else None
    except (TypeError, ValueError):
        return None
    return seed if isinstance(seed, int) else None


def _draws_ahead(study: optuna.Study) -> bool:
    """Whether the coordinator may draw a trial's values before the trial exists (see
    ``Coordinator._prepare``): for tunefleet's TPE, whose draws cost enough to be worth moving
    off the message path, without Hyperband. Every other sampler keeps Optuna's exact order of
    draws (a seeded Random run gives Optuna's values)."""
    from tunefleet.samplers import TPESampler

    return (FAST_TPE and type(study.sampler) is TPESampler
            and not isinstance(study.pruner, optuna.pruners.HyperbandPruner))


def _independent_is_primary(sampler: optuna.samplers.BaseSampler, study: optuna.Study) -> bool:
    """Whether ``sample_independent`` is how the sampler draws (not a warned-about fallback
    for parameters outside its relative search space)."""
    if isinstance(sampler, optuna.samplers.PartialFixedSampler):
        return _independent_is_primary(sampler._base_sampler, study)
    if isinstance(sampler, optuna.samplers.TPESampler):
        multivariate = getattr(sampler, "_is_multivariate", None)  # Optuna 5: None = by study
        return not (multivariate(study) if multivariate else sampler._multivariate)
    return isinstance(sampler, (optuna.samplers.RandomSampler, optuna.samplers.GridSampler))


def _presample_safe(sampler: optuna.samplers.BaseSampler) -> bool:
    if isinstance(sampler, optuna.samplers.PartialFixedSampler):
        return _presample_safe(sampler._base_sampler)
    from tunefleet.samplers import TPESampler  # the same algorithm as Optuna's, faster

    return type(sampler) in _PRESAMPLE_SAFE or type(sampler) is TPESampler


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
    heard: float = field(default_factory=time.monotonic)  # when it last sent anything


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
                 progress: Progress | None = None, setup: Callable[[], Any] | None = None,
                 mirror: MirroredStorage | None = None, grace: float = 5.0,
                 worker_timeout: float | None = None, orphans: Sequence[int] = (),
                 reclaim_window: float = 0.0, seed: int | None = None,
                 deterministic: bool = False) -> None:
        self.study = study
        # Trials a dead coordinator left RUNNING, by number: a worker that outlived it may
        # bring their results back (HELLO "reclaim") until the window closes; then they are
        # failed and retried. Each holds its place in the budget meanwhile.
        self._orphans = {study._storage.get_trial_number_from_id(t): t for t in orphans}
        self._reclaim_until = time.monotonic() + reclaim_window
        self.worker_timeout = worker_timeout
        self._silenced: dict[int, str] = {}  # trial id -> why it was failed (silent worker)
        self._next_silence_check = 0.0
        self.mirror = mirror
        self.grace = grace
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
        # Relative samplers (CMA-ES, GP, multivariate TPE...) draw a parameter outside their
        # relative space independently only as a fallback, with a warning: drawn ahead for a
        # parameter the trial never asks for, it would warn (and use random numbers) where
        # study.optimize does not. Those get their relative values ahead, the rest on demand.
        self._presample_independent = _independent_is_primary(study.sampler, study)
        self._counted = len(self._orphans)  # trials of this run that count against n_trials
        self._error: BaseException | None = None
        self._lost_in_a_row = 0
        self._last_loss = ""
        self._heartbeat = is_heartbeat_enabled(self._storage)
        self._next_beat = 0.0
        self._aborted: str | None = None
        # Trials that ended, waiting for the durable storage before they count: (the mirror's
        # change number that ended them, trial, state, values).
        self._unannounced: deque[tuple[int, optuna.Trial, TrialState, Any, bool]] = deque()
        self._parked: list[Link] = []  # workers waiting for a trial while the storage catches up
        # Values drawn ahead (see _prepare): (relative search space, relative values,
        # independent values).
        self._prepared: deque[tuple[dict, dict, dict]] = deque()
        # A study made with --seed draws each trial's values from (seed, number, parameter),
        # so that a run continued later draws what one uninterrupted run would have.
        self._seed = seed if seed is not None else _spec_seed(study)
        self._reseeder = Reseeder(study.sampler, self._seed) if self._seed is not None else None
        # --deterministic: trial k waits for every trial numbered k - n_workers or lower, and
        # its sampler and pruner see only those (see hub/_ordered.py).
        self._window = n_workers if deterministic else 0
        self._held: list[Link] = []  # workers waiting for the trials before theirs to end
        self._prepare_limit = (2 if (self._presample and _draws_ahead(study)
                                     and self._seed is None) else 0)
        self._signal: int | None = None  # the first SIGINT / SIGTERM received
        self._signals = 0
        self._stop_at: float | None = None  # end of the grace period for running trials

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Run until the limits are reached and every trial has finished and is stored;
        re-raise an objective's exception that is not in ``catch``, after stopping the workers.
        SIGINT / SIGTERM stop handing out trials, give running trials ``grace`` seconds, then
        close them as FAIL and raise :class:`~tunefleet.errors.Interrupted`."""
        self.study._stop_flag = False
        self._storage.set_study_system_attr(self.study._study_id, attrs.MODE, "hub")
        previous = self._install_signal_handlers()
        try:
            self.backend.start(self.n_workers)
            listener = self.backend.listener
            while not self._done():
                prepare = self._can_prepare()
                messages = listener.poll(0.0 if prepare else (
                    0.005 if self._waiting_on_storage() else 0.1))
                for link, msg in messages:
                    if msg is None:
                        self._on_lost(link)
                    else:
                        self._on_message(link, msg)
                if prepare and not messages:
                    self._prepare()  # nothing to answer: draw the next trial's values now
                self._tick()
            self._settle_orphans(force=True)
            if self._error is not None:
                self._abort(f"optimization stopped: {self._error!r}")
            elif self._signal is not None:
                self._abort(f"interrupted by {signal.Signals(self._signal).name}")
        except BaseException as exc:  # KeyboardInterrupt included: close what is running
            self._abort(f"optimization stopped: {exc!r}")
            raise
        finally:
            for link in self.backend.listener.links():
                link.send((P.STOP,))
            self.backend.shutdown(grace=2.0 if self._aborted is None else 0.0)
            try:
                self._drain()
            finally:
                self.progress.close()
                self._restore_signal_handlers(previous)
        if self._error is not None:
            raise self._error
        if self._signal is not None:
            raise Interrupted(self._signal)

    # -- signals ------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT always, SIGTERM unless the program set its own handler; main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            if signum == signal.SIGTERM and current not in (signal.SIG_DFL, None):
                continue
            previous[signum] = current
            signal.signal(signum, self._on_signal)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """First signal: no new trials, running ones get the grace period. Second: stop now.
        Only flags are set here; the loop does the work."""
        self._signals += 1
        if self._signal is None:
            self._signal = signum
            self._stop_at = time.monotonic() + self.grace
            n = len(self._running)
            _say(f"{signal.Signals(signum).name}: no new trials; "
                 + (f"waiting up to {self.grace:g} s for {n} running trial(s) "
                    "(Ctrl-C again to stop them now)" if n else "stopping"))
        else:
            self._stop_at = time.monotonic()

    def _drain(self) -> None:
        """Wait until the durable storage holds everything, saying so if it takes a while;
        then count what it holds. Signals here change nothing: what was counted is stored."""
        if self.mirror is None:
            self._announce()
            return
        shown = False
        t0 = time.monotonic()
        while True:
            try:
                self.mirror.flush(timeout=0.5)
                break
            except TimeoutError:
                if not shown:
                    _say(f"saving {self.mirror.pending} change(s) to the storage...")
                    shown = True
                self._announce()
            except Exception:
                break  # a failed durable write: raised by run_hub's close()
        self._announce()
        if shown:
            _say(f"saved in {time.monotonic() - t0:.1f} s")

    def _may_dispatch(self) -> bool:
        return (self._error is None and not self.study._stop_flag and self._signal is None
                and (self.limits.n_trials is None or self._counted < self.limits.n_trials)
                and self.limits.time_left())

    def _storage_behind(self) -> bool:
        """Hold back new trials while the durable storage is more than ~0.1 s behind."""
        return self.mirror is not None and self.mirror.lag() > 0.1

    def _waiting_on_storage(self) -> bool:
        return bool(self._unannounced or self._parked)

    def _done(self) -> bool:
        if self._error is not None:
            return True
        if self._signal is not None and self._stop_at is not None \
                and time.monotonic() >= self._stop_at:
            return True
        return (not self._running and not self._unannounced and not self._orphans
                and not self._may_dispatch())

    def _tick(self) -> None:
        self._settle_orphans()
        if self.mirror is not None and self.mirror.error is not None and self._error is None:
            self._error = self.mirror.error  # nothing more can be counted: stop the study
        self._announce()
        if self._parked and not self._storage_behind():
            parked, self._parked = self._parked, []
            self._dispatch_again(parked)
        if self._held and (self._history_ready() or not self._may_dispatch()):
            held, self._held = self._held, []
            self._dispatch_again(held)
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

    def _reclaim(self, link: Link, number: int, result: tuple) -> None:
        """A worker that outlived the previous coordinator brings the result of trial
        ``number``: the trial keeps its number and gets the result, as if never interrupted."""
        trial_id = self._orphans.pop(number, None)
        if trial_id is None:
            return  # not an orphan (already finished, or failed when the window closed)
        trial = optuna.Trial(self.study, trial_id)
        self._running[trial_id] = _Running(trial, link, {})
        _logger.info(f"Trial {number}: result reclaimed from worker {link.name}")
        self._finish(link, (trial_id, *result[1:]))

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
        hung, cut off): workers beat every second while a trial runs. A late result from such
        a worker is refused (see ``_finish``); the worker itself may go on with new trials."""
        now = time.monotonic()
        self._next_silence_check = now + min(1.0, self.worker_timeout / 4)
        for link, state in list(self._workers.items()):
            if state.trial_id is None or now - state.heard <= self.worker_timeout:
                continue
            run = self._running.pop(state.trial_id, None)
            trial_id, state.trial_id = state.trial_id, None
            if run is None:
                continue
            reason = (f"worker {link.name} was silent for {now - state.heard:.0f} s "
                      f"(worker_timeout {self.worker_timeout:g} s)")
            self._silenced[trial_id] = reason
            self._fail_lost(run, reason)

    def _announce(self) -> None:
        """Count the trials the durable storage now holds: callbacks, progress, best value."""
        durable = self.mirror.durable_seq if self.mirror is not None else None
        while self._unannounced and (durable is None or self._unannounced[0][0] <= durable):
            _, trial, state, values, callbacks = self._unannounced.popleft()
            self._after_trial(trial, state, values, callbacks)

    # -- messages -----------------------------------------------------------------------------
    def _on_message(self, link: Link, msg: tuple) -> None:
        op = msg[0]
        state = self._workers.get(link)
        if state is None:
            state = self._workers[link] = _WorkerState()
        state.heard = time.monotonic()
        if op == P.BEAT:
            return
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
            for number, result in info.get("reclaim") or ():
                self._reclaim(link, number, result)
        elif op == P.FAILED:
            self._error = WorkerStartError(msg[1])
        else:
            _logger.warning(f"ignoring unknown message {op!r} from worker {link.name}")

    def _dispatch(self, link: Link, state: _WorkerState) -> None:
        if not self._may_dispatch():
            link.send((P.STOP,))
            state.trial_id = None
            return
        if self._storage_behind():
            state.trial_id = None
            self._parked.append(link)
            return
        if self._window and not self._history_ready():
            state.trial_id = None
            self._held.append(link)
            return
        if self._heartbeat:
            optuna.storages.fail_stale_trials(self.study)
        trial = self._ask()
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

    def _next_number(self) -> int:
        """The number the next ``study.ask()`` gives: the first queued trial's, or a new one."""
        waiting = self._storage.get_all_trials(self.study._study_id, deepcopy=False,
                                               states=(TrialState.WAITING,))
        return waiting[0].number if waiting else self._storage.get_n_trials(self.study._study_id)

    def _history_ready(self) -> bool:
        """--deterministic: whether every trial the next one may see (numbered ``window``
        places before it, or lower) has ended."""
        upto = self._next_number() - self._window
        unfinished = [r.trial.number for r in self._running.values()]
        unfinished.extend(self._orphans)
        return all(number > upto for number in unfinished)

    def _reseed(self, number: int, name: str | None = None) -> None:
        """Seeded studies: the sampler's random state for this trial (and parameter) depends on
        the seed and the trial number only, not on how many draws came before it; so a seeded
        Random run gives the same trials with any number of workers, and a resumed run (TPE,
        CMA-ES, NSGA-II with one worker) goes on as an uninterrupted one would (the keys of
        storage mode's SeededTrial)."""
        if self._reseeder:
            self._reseeder(number, name)

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
        if self._reseeder and trial._relative_params is None:
            self._reseed(trial.number)
            trial.relative_params  # drawn now, from this trial's seed
        out: dict[str, Any] = {}
        fixed = trial._fixed_params
        frozen = None
        filtered = None
        prepared = self._prepared.popleft()[2] if self._prepared else None
        if fixed:
            prepared = None
        for name, dist in self._known.items():
            if name in fixed or dist.single():
                continue
            if trial._is_relative_param(name, dist):
                out[name] = trial.relative_params[name]
                continue
            if not self._presample_independent:
                continue
            if prepared is not None and name in prepared:
                out[name] = prepared[name]
                continue
            if frozen is None:
                frozen = trial._get_latest_trial()
                filtered = filter_study(trial.study, frozen)
            self._reseed(trial.number, name)
            out[name] = self.study.sampler.sample_independent(filtered, frozen, name, dist)
        return out

    # -- samples drawn ahead, while the coordinator would otherwise wait ----------------------
    def _can_prepare(self) -> bool:
        """Whether to draw the next trial's values now: only for a sampler whose independent
        draws do not depend on the trial they are for (TPE leaves the trial's own number out
        and nothing else), never under Hyperband (its brackets go by trial number), and never
        more than the budget can use."""
        return (self._prepare_limit > 0 and bool(self._known)
                and len(self._prepared) < self._prepare_limit and self._may_dispatch()
                and (self.limits.n_trials is None
                     or self._counted + len(self._prepared) < self.limits.n_trials))

    def _prepare(self) -> None:
        """Draw a trial's values before the trial exists, so that a worker asking for one gets
        it without waiting for the sampler: the relative ones (multivariate TPE, Optuna 5's
        default; running trials count as constant-liar fantasies) for the search space the
        study has now, and independent ones for every known parameter."""
        ghost = optuna.trial.FrozenTrial(
            number=-1, trial_id=-1, state=TrialState.RUNNING, value=None, values=None,
            datetime_start=None, datetime_complete=None, params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values={})
        sampler = self.study.sampler
        space = sampler.infer_relative_search_space(self.study, ghost)
        # TPE's own step, without the constant-liar note it writes on the trial (there is no
        # trial yet: ``_ask`` has it written on the real one). Grouped TPE splits the space
        # first: it draws at ask time.
        relative = (sampler._sample_relative(self.study, ghost, space)
                    if space and not sampler._group else {})
        independent = {name: sampler.sample_independent(self.study, ghost, name, dist)
                       for name, dist in self._known.items()
                       if not dist.single() and name not in relative
                       and self._presample_independent}
        self._prepared.append((space, relative, independent))

    def _ask(self) -> optuna.Trial:
        """``study.ask()``, with the relative values drawn ahead when the search space is
        still the one they were drawn for (else the sampler draws them now, as usual)."""
        if self._window:  # --deterministic: the trial sees the study up to its window
            self.study._thread_local.cached_all_trials = None
            trial_id = self.study._pop_waiting_trial_id()
            if trial_id is None:
                trial_id = self._storage.create_new_trial(self.study._study_id)
            number = self._storage.get_trial_number_from_id(trial_id)
            return optuna.Trial(HistoryView(self.study, number - self._window), trial_id)
        if not self._prepared:
            return self.study.ask()
        space, relative, _ = self._prepared[0]
        sampler = self.study.sampler
        if not relative:
            return self.study.ask()
        draw = type(sampler)._sample_relative

        def prepared_or_draw(study: Any, trial: FrozenTrial, search_space: dict) -> dict:
            if search_space == space:
                return dict(relative)
            return draw(sampler, study, trial, search_space)

        sampler._sample_relative = prepared_or_draw  # this one ask only
        try:
            trial = self.study.ask()
            trial.relative_params  # Optuna draws them lazily: now, while the stand-in holds
            return trial
        finally:
            del sampler._sample_relative

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
            if self._reseeder:
                if run.trial._relative_params is None:
                    self._reseed(run.trial.number)
                    run.trial.relative_params
                self._reseed(run.trial.number, name)
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
        if kind == P.STORAGE:  # trial.storage in a worker (integrations, optuna.artifacts)
            return P.answer_storage(self._storage, request)
        raise ValueError(f"unknown request {kind!r}")

    # -- ends of trials -------------------------------------------------------------------------
    def _finish(self, link: Link, result: tuple) -> None:
        trial_id, state_name, values, ops, error = result
        run = self._running.pop(trial_id, None)
        state = self._workers.get(link)
        if state is not None:
            state.trial_id = None
        if run is None:  # already failed: by an abort, or because its worker fell silent
            why = self._silenced.pop(trial_id, None)
            if why is not None:
                _logger.warning(f"late result from worker {link.name} refused: its trial was "
                                f"failed and retried because the {why[len('worker '):]}")
            return
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
        if updated == TrialState.COMPLETE:
            log_completed_trial(self.study, out_values, number, params)
        elif updated == TrialState.PRUNED:
            _logger.info(f"Trial {number} pruned. {error[1] if error else ''}")
        elif error is not None:
            _logger.warning(f"Trial {number} failed with parameters: {params} because of the "
                            f"following error: {error[1]}.\n{error[2] or ''}".rstrip())
        else:
            _logger.warning(f"Trial {number} failed with parameters: {params} because of the "
                            f"following error: {warning}.")
        if updated == TrialState.FAIL and error is not None and not error[3]:
            # As in Optuna, an exception that stops the study is not passed to callbacks.
            self._count(trial, updated, out_values, callbacks=False)
        else:
            self._count(trial, updated, out_values)
        if updated == TrialState.FAIL and error is not None and not error[3]:
            self._error = error[0] if error[0] is not None else RuntimeError(
                f"objective failed in trial {number}: {error[1]}\n{error[2] or ''}".rstrip())

    def _count(self, trial: optuna.Trial, state: TrialState, values: Any, *,
               callbacks: bool = True) -> None:
        """Count ``trial`` as ended once the durable storage holds its end (at once when the
        study's storage is not mirrored)."""
        if self.mirror is None:
            self._after_trial(trial, state, values, callbacks)
        else:
            self._unannounced.append((self.mirror.seq, trial, state, values, callbacks))

    def _after_trial(self, trial: optuna.Trial, state: TrialState, values: Any,
                     callbacks: bool = True) -> None:
        if self.callbacks and callbacks:
            frozen: FrozenTrial = self._storage.get_trial(trial._trial_id)
            for callback in self.callbacks:
                callback(self.study, copy.deepcopy(frozen))
        if self.progress.enabled:
            started = trial._cached_frozen_trial.datetime_start
            self.progress.trial_done(state, values, time.time() - started.timestamp())

    def _on_lost(self, link: Link) -> None:
        state = self._workers.pop(link, None)
        if link in self._parked:
            self._parked.remove(link)
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
        self._count(trial, TrialState.FAIL, None)

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


def run_hub(study: optuna.Study, objective: Callable[..., Any], *, n_trials: int | None,
            n_workers: int | None, timeout: float | None, callbacks: list[Callable],
            catch: Any, show_progress_bar: bool, gpus: list | None, max_retries: int,
            backend: str, setup: Callable[[], Any] | None,
            backend_options: dict[str, Any], grace: float = 5.0,
            worker_timeout: float | None = None,
            reclaim_window: float | None = None, seed: int | None = None,
            deterministic: bool = False) -> optuna.Study:
    """What ``tunefleet.optimize`` does; see there."""
    if isinstance(catch, type):
        catch = (catch,)
    catch = tuple(catch)
    if n_trials is not None and n_trials < 0:
        raise ValueError(f"n_trials must be non-negative, got {n_trials}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be non-negative, got {max_retries}")
    if grace < 0:
        raise ValueError(f"grace must be non-negative, got {grace}")
    if worker_timeout is not None and worker_timeout < 3 * BEAT_INTERVAL:
        raise ValueError(f"worker_timeout must be at least {3 * BEAT_INTERVAL:g} s (workers "
                         f"beat every {BEAT_INTERVAL:g} s), got {worker_timeout}")
    if study._thread_local.in_optimize_loop:
        raise RuntimeError("Nested invocation of `Study.optimize` method isn't allowed.")
    if deterministic:
        if seed is None and _spec_seed(study) is None:
            raise ValueError("deterministic=True needs a seed: pass seed=... (or make the "
                             "study with --seed)")
        if not random_states(study.sampler):
            raise ValueError(f"deterministic=True needs a sampler with a random state to seed "
                             f"({type(study.sampler).__name__} has none)")
    options = dict(backend_options)
    if gpus is not None:
        options["gpus"] = gpus
    engine = make_backend(backend, **options)
    workers = n_workers if n_workers is not None else engine.default_workers()
    if workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {workers}")
    if n_trials is not None:
        workers = max(1, min(workers, n_trials)) if engine.starts_workers else workers
    # The coordinator is the only writer: it works on an in-memory copy of a database or
    # journal study, and a background thread writes every change through by group commit.
    run_study, mirror = mirrored_study(study)
    try:
        _claim(run_study)
        if reclaim_window is None:  # workers that outlive a coordinator only join by network
            reclaim_window = 0.0 if engine.starts_workers else 10.0
        orphans = list(mirror.orphans) if mirror is not None else []
        if not reclaim_window:
            recover_orphans(run_study, orphans, max_retries)
            orphans = []
    except BaseException:
        if mirror is not None:
            mirror.close()
        raise
    progress = Progress(show_progress_bar, n_trials, timeout, study.directions)
    coordinator = Coordinator(run_study, objective, engine, n_workers=workers,
                              limits=Limits(n_trials, timeout), callbacks=callbacks, catch=catch,
                              max_retries=max_retries, progress=progress, setup=setup,
                              mirror=mirror, grace=grace, worker_timeout=worker_timeout,
                              orphans=orphans, reclaim_window=reclaim_window, seed=seed,
                              deterministic=deterministic)
    study._thread_local.in_optimize_loop = run_study._thread_local.in_optimize_loop = True
    try:
        coordinator.run()
    finally:
        study._thread_local.in_optimize_loop = run_study._thread_local.in_optimize_loop = False
        _release(run_study)
        if mirror is not None:
            if sys.exc_info()[1] is None or isinstance(sys.exc_info()[1], Interrupted):
                mirror.close()  # waits for the durable storage; raises MirrorError on failure
            else:
                try:
                    mirror.close()
                except Exception as exc:  # do not hide the run's own error
                    _logger.warning(f"{exc}")
    return study


#: Study system attribute naming the coordinator that runs the study now: {"host", "pid"}.
OWNER = "tunefleet:coordinator"


def _claim(study: optuna.Study) -> None:
    """Refuse to run a study that a live coordinator on this host is running (two writers
    would corrupt it); a dead one's claim is taken over."""
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    owner = study._storage.get_study_system_attrs(study._study_id).get(OWNER)
    if isinstance(owner, dict) and owner.get("host") == me["host"] and owner.get("pid") not in (
            None, me["pid"]) and _alive(int(owner["pid"])):
        raise UsageError(f"study {study.study_name!r} is being run by the coordinator with pid "
                         f"{owner['pid']} on this host; stop it first, or use another --study")
    study._storage.set_study_system_attr(study._study_id, OWNER, me)


def _release(study: optuna.Study) -> None:
    try:
        study._storage.set_study_system_attr(study._study_id, OWNER, None)
    except Exception:  # the storage itself may be what failed
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def recover_orphans(study: optuna.Study, orphans: Sequence[int], max_retries: int) -> int:
    """Fail the trials an earlier coordinator left RUNNING (it died: SIGKILL, power loss) with
    the reason in ``tunefleet:fail_reason``, and queue their parameters again, up to
    ``max_retries`` runs of the same parameters. Returns how many were failed."""
    storage = study._storage
    failed = 0
    for trial_id in orphans:
        frozen = storage.get_trial(trial_id)
        if frozen.state != TrialState.RUNNING:
            continue
        storage.set_trial_system_attr(trial_id, attrs.FAIL_REASON,
                                      "its coordinator died before the trial ended")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        failed += 1
        retry = int(frozen.system_attrs.get(attrs.RETRY_COUNT, 0))
        if retry < max_retries:
            params = dict(frozen.system_attrs.get("fixed_params", {}))
            params.update(frozen.params)
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs={"fixed_params": params, attrs.RETRY_OF: frozen.number,
                              attrs.RETRY_COUNT: retry + 1},
                user_attrs=dict(frozen.user_attrs)))
    if failed:
        _logger.warning(f"{failed} trial(s) left RUNNING by an earlier coordinator were failed "
                        "and their parameters queued again")
    return failed
