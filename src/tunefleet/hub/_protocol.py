"""The hub's wire protocol: every message between the coordinator and a worker, as a type.

A trial costs one round trip in the common case: the worker's :class:`Next` carries the result
of its previous trial and asks for the next one, and the coordinator's :class:`NewTrial` reply
carries values for the parameters the study has seen before, sampled at ask time. Only a
parameter the coordinator could not foresee, ``should_prune``, ``trial.study`` and
``trial.storage`` need a round trip of their own (:class:`Call`, answered by :class:`Reply`).

Worker -> coordinator: :class:`Hello`, :class:`Next`, :class:`Call`, :class:`Ops`,
:class:`Beat`, :class:`Failed`. Coordinator -> worker: :class:`Config`, :class:`NewTrial`,
:class:`Reply`, :class:`Stop`. A :class:`Call` carries one request: :class:`Suggest`,
:class:`Prune`, :class:`StudyGet`, :class:`StudyCall`, :class:`StorageCall`, or one of the
checkpoint requests of a remote worker (:class:`CkptLatest`, :class:`CkptRead`,
:class:`CkptBegin`, :class:`CkptWrite`, :class:`CkptCommit`: a checkpoint streamed in chunks,
one round trip each, so that neither side holds it whole). Trials' effects
travel as ops (:class:`Param`, :class:`Report`, :class:`UserAttr`, :class:`Constraint`),
applied in order before the request or the result they come with.

On the wire a message is a plain tuple, ``(tag, *fields)``, nested values plain tuples too
(:func:`encode`, :func:`decode`): a pickled class costs an import lookup at each end (about
15 us per message, measured), a plain tuple nothing. Transports move these tuples; the network
transport authenticates each one before it unpickles it.
"""

from __future__ import annotations

import datetime
from typing import Any, NamedTuple, Union

from optuna.distributions import BaseDistribution

# -- outcomes of a trial -------------------------------------------------------------------------
COMPLETE = "complete"
PRUNED = "pruned"
FAIL = "fail"
#: The worker was asked to stop (SIGTERM: a preemption) and hands the trial back, to be
#: continued elsewhere from its last checkpoint; not the objective's failure.
PREEMPTED = "preempted"


class Error(NamedTuple):
    """Why a trial did not complete: the exception (None when it does not pickle), its repr,
    the objective's traceback, and whether ``catch`` covers it (the study goes on)."""

    exc: BaseException | None
    text: str
    traceback: str | None
    caught: bool


# -- ops: what an objective did to its trial, sent with its next request or its result ----------
class Param(NamedTuple):
    """A parameter the worker drew itself (fixed, single-valued or drawn ahead)."""

    name: str
    dist: BaseDistribution
    value: Any


class Report(NamedTuple):
    step: int
    value: float


class UserAttr(NamedTuple):
    key: str
    value: Any


class Constraint(NamedTuple):
    key: str
    value: float


Op = Union[Param, Report, UserAttr, Constraint]


class Result(NamedTuple):
    """The end of one trial: its state (COMPLETE, PRUNED or FAIL), values, the ops not sent
    yet, and the error when it did not complete."""

    trial_id: int
    state: str
    values: Any
    ops: list[Op]
    error: Error | None


# -- requests of a Call ---------------------------------------------------------------------------
class Suggest(NamedTuple):
    """A parameter the coordinator did not draw ahead: it draws and stores it."""

    name: str
    dist: BaseDistribution


class Prune(NamedTuple):
    """``trial.should_prune()``, answered by the study's pruner."""


class StudyGet(NamedTuple):
    """An attribute of the study (``trial.study.best_value``...)."""

    attr: str


class StudyCall(NamedTuple):
    """A method of the study (``trial.study.enqueue_trial(...)``...)."""

    method: str
    args: tuple
    kwargs: dict


class StorageCall(NamedTuple):
    """A method of ``trial.storage``, one of :data:`STORAGE_METHODS` (see :func:`answer_storage`)."""

    method: str
    args: tuple
    kwargs: dict


class CkptLatest(NamedTuple):
    """The latest checkpoint of the running trial's lineage: ``(version, [(path, size)...])``,
    or None. Remote workers only: local ones reach the checkpoint folder themselves."""


class CkptRead(NamedTuple):
    """Up to ``size`` bytes of one file of a checkpoint, from ``offset`` (one chunk: the worker
    asks for the next once it has written this one, so neither side holds a whole file)."""

    version: str
    path: str
    offset: int
    size: int


class CkptBegin(NamedTuple):
    """A new checkpoint of the running trial is coming; the answer is its upload id."""


class CkptWrite(NamedTuple):
    """One chunk of one file of an upload."""

    upload: int
    path: str
    offset: int
    data: bytes


class CkptCommit(NamedTuple):
    """Every file of the upload is written: make it the lineage's latest checkpoint."""

    upload: int


Request = Union[Suggest, Prune, StudyGet, StudyCall, StorageCall, CkptLatest, CkptRead,
                CkptBegin, CkptWrite, CkptCommit]


# -- worker -> coordinator ------------------------------------------------------------------------
class Hello(NamedTuple):
    """A worker joins. ``reclaim``: results it finished for a coordinator that died, as
    ``(trial number, Result)``, for the one started again to keep."""

    pid: int
    host: str
    label: str | None = None
    reclaim: list[tuple[int, Result]] = []


class Next(NamedTuple):
    """The previous trial's result (None for the first) and the request for the next trial;
    ``leaving``: no next trial, the worker is stopping (SIGTERM)."""

    result: Result | None
    leaving: bool = False


class Call(NamedTuple):
    """A request the worker waits on (answered by :class:`Reply`), with the ops before it."""

    trial_id: int
    ops: list[Op]
    request: Request


class Ops(NamedTuple):
    """Buffered ops, sent one way so that a long trial's reports reach the pruner and the
    storage while it runs."""

    trial_id: int
    ops: list[Op]


class Beat(NamedTuple):
    """Still alive: sent when nothing else was sent for a while (see ``hub/_beat.py``)."""


class Failed(NamedTuple):
    """The worker could not start (the objective could not be loaded or its setup failed)."""

    message: str


# -- coordinator -> worker ------------------------------------------------------------------------
class Config(NamedTuple):
    """The cloudpickled ``WorkerConfig`` (objective, catch, setup), once per worker."""

    payload: bytes


class NewTrial(NamedTuple):
    """A trial to run. ``presampled``: values drawn ahead, by name; ``space``: the known search
    space they were drawn from, or None when unchanged since this worker's last trial;
    ``lineage``: the first trial of the retries this one continues (the key of its
    checkpoints: its own number for a fresh trial); ``stored``: how many more of this
    worker's results the durable storage holds since the last NewTrial (a worker that may
    rejoin keeps each result until then, for a coordinator started again to reclaim)."""

    trial_id: int
    number: int
    datetime_start: datetime.datetime | None
    fixed_params: dict[str, Any]
    presampled: dict[str, Any]
    space: dict[str, BaseDistribution] | None
    user_attrs: dict[str, Any]
    lineage: int
    stored: int = 0


class Reply(NamedTuple):
    """The answer to a :class:`Call`: its value, or the exception raised when ``ok`` is False."""

    ok: bool
    value: Any


class Stop(NamedTuple):
    """No more trials for this worker: it exits, with 1 when the study stopped on an error
    (``error`` says which), as the coordinator does."""

    error: str | None = None


Message = Union[Hello, Next, Call, Ops, Beat, Failed, Config, NewTrial, Reply, Stop]

# -- the wire -------------------------------------------------------------------------------------
_MESSAGES: tuple[type, ...] = (Hello, Next, Call, Ops, Beat, Failed, Config, NewTrial, Reply, Stop)
_REQUESTS: tuple[type, ...] = (Suggest, Prune, StudyGet, StudyCall, StorageCall, CkptLatest,
                               CkptRead, CkptBegin, CkptWrite, CkptCommit)
_OPS: tuple[type, ...] = (Param, Report, UserAttr, Constraint)
#: tag -> type, for each family; a tag is the type's name in lower case ("next", "param"...).
_TYPES = {cls.__name__.lower(): cls for cls in (*_MESSAGES, *_REQUESTS, *_OPS)}
_TAGS = {cls: tag for tag, cls in _TYPES.items()}


def _plain(value: tuple) -> tuple:
    return (_TAGS[type(value)], *value)


def _ops_out(ops: list) -> list[tuple]:
    return [(_TAGS[type(op)], *op) for op in ops]


def _ops_in(ops: list) -> list[Op]:
    return [_TYPES[op[0]]._make(op[1:]) for op in ops]


def _result_out(result: Result | None) -> tuple | None:
    if result is None:
        return None
    error = result.error
    return (result.trial_id, result.state, result.values, _ops_out(result.ops),
            None if error is None else tuple(error))


def _result_in(raw: tuple | None) -> Result | None:
    if raw is None:
        return None
    trial_id, state, values, ops, error = raw
    return Result(trial_id, state, values, _ops_in(ops),
                  None if error is None else Error._make(error))


def encode(msg: Message) -> tuple:
    """``msg`` as the plain tuple that travels."""
    kind = type(msg)
    if kind is Next:
        return ("next", _result_out(msg.result), msg.leaving)
    if kind is Call:
        return ("call", msg.trial_id, _ops_out(msg.ops), _plain(msg.request))
    if kind is Ops:
        return ("ops", msg.trial_id, _ops_out(msg.ops))
    if kind is Hello:
        return ("hello", msg.pid, msg.host, msg.label,
                [(number, _result_out(result)) for number, result in msg.reclaim])
    return (_TAGS[kind], *msg)


def decode(raw: tuple) -> Message:
    """The message that ``raw`` (from :func:`encode`) stands for. Raises ``ValueError`` for
    anything else (an authenticated peer of another version), never a worse error."""
    try:
        tag = raw[0]
        if tag == "next":
            return Next(_result_in(raw[1]), raw[2])
        if tag == "call":
            return Call(raw[1], _ops_in(raw[2]), _TYPES[raw[3][0]]._make(raw[3][1:]))
        if tag == "ops":
            return Ops(raw[1], _ops_in(raw[2]))
        if tag == "hello":
            return Hello(raw[1], raw[2], raw[3],
                         [(number, _result_in(result)) for number, result in raw[4]])
        kind = _TYPES[tag]
        if kind not in _MESSAGES:
            raise KeyError(tag)
        return kind._make(raw[1:])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"not a hub message: {str(raw)[:80]}") from exc


#: What ``trial.storage`` may do from a worker: every read, and writes of attributes and
#: intermediate values. Trials are created, and their state, values and parameters set, by the
#: coordinator alone, since it is the study's only writer.
STORAGE_READS = frozenset({
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "get_trial",
    "get_all_trials", "get_n_trials", "get_best_trial", "get_trial_params",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_trial_param",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "check_trial_is_updatable",
})
STORAGE_WRITES = frozenset({
    "set_trial_user_attr", "set_trial_system_attr", "set_trial_intermediate_value",
    "set_study_user_attr", "set_study_system_attr", "remove_session",
})
STORAGE_METHODS = STORAGE_READS | STORAGE_WRITES


def answer_storage(storage: Any, request: StorageCall) -> Any:
    """The coordinator's answer to a :class:`StorageCall`: the call on its storage, for the
    methods of ``STORAGE_METHODS`` only."""
    if request.method not in STORAGE_METHODS:
        raise NotImplementedError(f"storage.{request.method}() is not available to hub workers")
    return getattr(storage, request.method)(*request.args, **request.kwargs)
