"""A peer: a local Optuna study, ``r`` rounds of ``t`` trials, best trials shared by gossip.

Each round (1) adds the trials other peers sent since the last round (after the first
``explore_rounds``, run on this peer's own trials only), (2) runs ``t`` trials of
the objective, (3) sends this peer's best trials to every peer it knows. ``terminate()`` keeps
serving until every live peer has finished its rounds and all agree on the best (a last
exchange of bests), so every peer that ends reports the same global best.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import time
import zlib
from typing import Any, Callable, Iterator, Sequence

import optuna
from optuna.trial import TrialState

from tunefleet import _attrs as attrs
from tunefleet.errors import TunefleetError, UsageError
from tunefleet.p2p import _wire as wire
from tunefleet.p2p._config import PeerConfig
from tunefleet.p2p._gossip import Node
from tunefleet.p2p._options import echo_peer_summary, parse_peer_argv, usage_exit
from tunefleet._studies import StudySpec, create_or_load_study
from tunefleet.transport import P2P_KEY_ENV

log = logging.getLogger("tunefleet.p2p")
Objective = Callable[[optuna.Trial], Any]


def peer_seed(seed: int | None, uid: str) -> int | None:
    """Mix the sampler seed with the UID, so peers given one --seed still explore apart."""
    if seed is None:
        return None
    return (seed * 1_000_003 + zlib.crc32(uid.encode())) % 2**32


class Peer:
    """One member of a swarm. ``optimize()`` runs the rounds, ``terminate()`` ends together.

    Give the objective as ``objective`` (any callable), ``objective_function`` or
    ``objective_object`` (an instance with ``__call__``), and the options as keywords
    (see ``PeerConfig``), as a ``config``, or with ``parse=True`` from the command line
    (``argv``, default ``sys.argv[1:]``), where the result is printed at the end.
    """

    def __init__(self, objective: Objective | None = None, *,
                 objective_function: Objective | None = None,
                 objective_object: Objective | None = None,
                 parse: bool = False, argv: Sequence[str] | None = None,
                 config: PeerConfig | None = None, **options: Any) -> None:
        given = [o for o in (objective, objective_function, objective_object) if o is not None]
        if len(given) != 1 or not callable(given[0]):
            raise UsageError("give exactly one callable objective "
                             "(objective, objective_function or objective_object)")
        self.objective = given[0]
        self._print_json: bool | None = None
        if parse:
            parsed, as_json, quiet = parse_peer_argv(argv)
            config = PeerConfig(**{**parsed, **options})
            self._print_json = as_json
            setup_logging(logging.WARNING if quiet else logging.INFO)
        elif config is None:
            config = PeerConfig(**options)
        with self._usage_errors():
            self.config = config.checked()
        self.uid = self.config.uid
        self.study: optuna.Study | None = None
        self.node: Node | None = None
        self.n_received = 0
        self.rounds_done = 0
        # every trial record held, as (key, fingerprint): a second record under a known key
        # that says something else is added too (see wire.final_best for who wins)
        self._known: set[wire.Record] = set()
        self._indexed = 0  # trials of the local study already in _known
        self._token = ""  # this life's local study's token, in its own trial keys
        self._sent: set[str] = set()
        self._finished = False
        self._closed = False
        self._summary: dict[str, Any] | None = None
        self._best_digest: str | None = None
        self._n_own = 0  # this peer's own trials in its local study, earlier runs included
        self._rngs: list[Any] = []  # a seeded sampler's random states, reseeded per trial
        self.started_at: float | None = None  # unix time of the first round
        self.rounds_done_at: float | None = None

    @contextlib.contextmanager
    def _usage_errors(self) -> Iterator[None]:
        """With ``parse=True`` the script is a command: bad input is one line and exit 2."""
        try:
            yield
        except TunefleetError as exc:
            if self._print_json is None:
                raise
            usage_exit(exc)

    # ---- life cycle -----------------------------------------------------------------------
    def start(self) -> "Peer":
        """Listen, join the swarm (unless this is the seed) and open the local study."""
        if self.node is not None:
            return self
        with self._usage_errors():
            return self._start()

    def _start(self) -> "Peer":
        c = self.config
        storage = c.storage or optuna.storages.InMemoryStorage()
        spec = StudySpec(directions=list(c.directions), sampler=c.sampler,
                         seed=peer_seed(c.sampler_seed, c.uid), search_space=c.search_space)
        self.study = create_or_load_study(storage, c.study_name, spec)
        self.study._storage.set_study_system_attr(self.study._study_id, attrs.MODE, "p2p")
        self._token = wire.study_token(self.study)
        self._index_known()
        self._n_own = sum(attrs.ORIGIN not in t.system_attrs
                          for t in self.study.get_trials(deepcopy=False))
        if spec.seed is not None:
            from tunefleet.samplers import random_states  # as the hub and storage mode

            self._rngs = random_states(self.study.sampler)
        self.node = Node(c)
        for warning in c.warnings:
            log.warning("peer %s: %s", self.uid, warning)
        if c.key is None:
            log.warning("peer %s: no key: the swarm is open, anyone who can reach %s can join "
                        f"it and send trials (set --key-file or {P2P_KEY_ENV})", self.uid,
                        self.node.bound)
        self.node.start()
        if c.seed_uid is not None:
            assert c.seed_address is not None
            self.node.join_swarm(c.seed_uid, c.seed_address, c.join_timeout)
        else:
            log.info("peer %s: seed of a new swarm, listening on %s", self.uid, self.node.address)
        if c.wait_peers > 1:
            log.info("peer %s: waiting for %d peers", self.uid, c.wait_peers)
            while self.node.n_known() < c.wait_peers:
                if self.node.stopped.is_set():
                    raise TunefleetError(f"peer {self.uid}: the network thread stopped")
                time.sleep(0.2)  # the view is refreshed once per heartbeat anyway
        return self

    def optimize(self) -> optuna.Study:
        """Run the rounds; the study afterwards holds this peer's trials and received ones."""
        self.start()
        assert self.study is not None and self.node is not None
        c = self.config
        self.started_at = time.time()
        try:
            for r in range(c.rounds):
                # The first rounds use this peer's own trials only: received ones wait in the
                # queue. Peers that took others' bests from the start all modelled the same
                # region and lost the diversity of independent runs (a local optimum for all).
                if r >= (c.explore_rounds or 0):
                    self._absorb()
                self.study.optimize(self._run_trial, n_trials=c.trials, catch=c.catch)
                self._share()
                self.rounds_done = r + 1
                log.info("peer %s: round %d/%d, best %s, %d received so far", self.uid, r + 1,
                         c.rounds, self._best_text(), self.n_received)
        except BaseException:
            self._abort()
            raise
        self.rounds_done_at = time.time()
        self._finished = True
        self.node.finish()
        log.info("peer %s: rounds done, waiting for the other peers to finish", self.uid)
        return self.study

    def terminate(self, timeout: float | None = None) -> dict[str, Any]:
        """Distributed termination: serve until every live peer has finished, then leave.

        Returns the summary (best value and parameters, who found them, the membership seen);
        with ``parse=True`` it is also printed. TIMEOUT (seconds) bounds the wait.
        """
        if self._summary is not None:
            return self._summary
        self.start()
        assert self.node is not None
        if not self._finished:
            self._finished = True
            self.node.finish()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._tell_best()
            while not self.node.done.wait(0.1):
                if self._absorb():
                    self._tell_best()
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("peer %s: leaving before every peer finished (timeout)", self.uid)
                    break
        except BaseException:
            self._abort()
            raise
        self._absorb()
        self.node.leave()
        self._closed = True
        self._summary = self.summary()
        self._summary["ended_at"] = time.time()
        if self._print_json is not None:
            echo_peer_summary(self._summary, self._print_json)
        return self._summary

    def __enter__(self) -> "Peer":
        return self.start()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self._abort()
        elif not self._closed:
            self.terminate()

    def _abort(self) -> None:
        """Leave at once (an error or Ctrl-C): the others must not wait for us."""
        if self.node is not None and not self._closed:
            self._closed = True
            self.node.leave(wait=False)

    # ---- one round ------------------------------------------------------------------------
    def _run_trial(self, trial: optuna.Trial) -> Any:
        """Run the objective, recording who ran it and when. With --seed the sampler's random
        state depends on the seed and on how many trials this peer ran before (in this run or
        in an earlier one on the same --storage) only: a peer continued later draws what one
        uninterrupted run would have drawn."""
        if self._rngs:
            key = zlib.crc32(f"{self.config.sampler_seed}/{self.uid}/{self._n_own}".encode())
            for rng in self._rngs:
                rng.seed(key)
        self._n_own += 1
        storage, tid = trial.storage, trial._trial_id
        storage.set_trial_system_attr(tid, attrs.WORKER, self.uid)
        storage.set_trial_system_attr(tid, attrs.HOST, socket.gethostname())
        storage.set_trial_system_attr(tid, attrs.STARTED, time.time())
        try:
            return self.objective(trial)
        finally:
            storage.set_trial_system_attr(tid, attrs.FINISHED, time.time())

    def _index_known(self) -> None:
        """Record the local study's completed trials not recorded yet (this peer's own, run
        since the last call): one of them coming back from another peer is not added again."""
        assert self.study is not None
        trials = self.study.get_trials(deepcopy=False)
        for t in trials[self._indexed:]:
            if t.state == TrialState.COMPLETE:
                self._known.add(wire.record_of(t, self.uid, self._token))
        self._indexed = len(trials)

    def _absorb(self) -> int:
        """Add the trial records received since the last call to the local study, each once.

        A record is a key and what the trial says: a record under a known key that says
        something else (a misbehaving peer; an earlier life of this peer's UID) is added as
        well, so every peer ends up holding the same records and picks the same best."""
        assert self.node is not None and self.study is not None
        self._index_known()
        added = 0
        while True:
            try:
                key, sender, trial = self.node.received.get_nowait()
            except queue.Empty:
                self._indexed = len(self.study.get_trials(deepcopy=False))
                return added
            record = wire.Record(key, wire.fingerprint(trial))
            if record in self._known:
                continue
            try:
                self.study.add_trial(trial)
            except Exception as exc:  # e.g. a multi-objective trial in a single-objective study
                log.warning("peer %s: trial %s from %s not added: %s", self.uid, key, sender, exc)
                continue
            self._known.add(record)
            self.n_received += 1
            added += 1

    def _tell_best(self) -> None:
        """Give the network thread this peer's best for the last exchange, when it changed."""
        assert self.node is not None and self.study is not None
        digest, best = wire.final_best(self.study, self.uid, self._token)
        if digest != self._best_digest:
            self._best_digest = digest
            self.node.set_best(digest, [wire.trial_to_payload(t, self.uid, self._token)
                                        for t in best])

    def _share(self) -> None:
        assert self.node is not None and self.study is not None
        chosen = wire.best_trials(self.study, self.config.share, self.config.top_k)
        payloads = [wire.trial_to_payload(t, self.uid, self._token) for t in chosen]
        new = [p for p in payloads if p["key"] not in self._sent]
        self._sent.update(p["key"] for p in new)
        self.node.share(new, payloads)

    # ---- results --------------------------------------------------------------------------
    def _best_text(self) -> str:
        s = self.summary(peers=False)
        if s.get("best_value") is None:
            return "none" if "best_trials" not in s else f"{len(s['best_trials'])} Pareto trials"
        return f"{s['best_value']:.6g} (by {s['found_by']})"

    def summary(self, peers: bool = True) -> dict[str, Any]:
        """Best value, parameters and finder; trial counts; the membership this peer saw."""
        assert self.study is not None
        trials = self.study.get_trials(deepcopy=False)
        out: dict[str, Any] = {"uid": self.uid, "best_value": None, "best_params": None,
                               "found_by": None}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(self.study.directions) > 1:
            out["best_trials"] = [
                {"values": t.values, "params": t.params,
                 "found_by": t.system_attrs.get(attrs.WORKER, self.uid)}
                for t in (self.study.best_trials if complete else [])]
        elif complete:
            # ties: the same one everywhere
            best = wire.final_best(self.study, self.uid, self._token)[1][0]
            out.update(best_value=best.value, best_params=best.params,
                       found_by=best.system_attrs.get(attrs.WORKER, self.uid))
        out.update(n_trials=len(trials), n_received=self.n_received, rounds=self.rounds_done,
                   started_at=self.started_at, rounds_done_at=self.rounds_done_at)
        if self.node is not None and self.node.final_done is not None:
            assert self.node.final_started is not None
            out["final_exchange_s"] = round(self.node.final_done - self.node.final_started, 3)
            out["agreed"] = self.node.agreed  # False: ended by --final-timeout
        if peers and self.node is not None:
            out["peers"] = self.node.view()
        return out


def setup_logging(level: int = logging.INFO) -> None:
    """Progress lines on stderr, once; Optuna's per-trial lines only as warnings."""
    logger = logging.getLogger("tunefleet.p2p")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
