"""The hub's wire protocol: what each message tuple means.

A trial costs one round trip in the common case: the worker's ``NEXT`` carries the result of its
previous trial and asks for the next one, and the coordinator's ``TRIAL`` reply carries values
for the parameters the study has seen before, sampled at ask time. Only a parameter the
coordinator could not foresee, ``should_prune``, ``trial.study`` and ``trial.storage`` need a round
trip of their own.

Worker -> coordinator
    (HELLO, info)                      info: {"pid", "host"}
    (NEXT, result | None)              result: Result tuple, see below
    (CALL, trial_id, ops, request)     request: (SUGGEST, name, dist) | (PRUNE,)
                                       | (STUDY_GET, attr) | (STUDY_CALL, method, args, kwargs)
                                       | (STORAGE, method, args, kwargs): see answer_storage
    (OPS, trial_id, ops)               one-way flush of buffered reports and attributes
    (FAILED, message)                  the worker could not start (objective not loadable)
Coordinator -> worker
    (CONFIG, payload)                  cloudpickled WorkerConfig
    (TRIAL, trial_id, number, datetime_start, fixed_params, presampled, space, user_attrs)
                                       presampled: {name: value}; space: {name: distribution}
                                       of the known search space, or None when unchanged
    (REPLY, ok, value)                 answer to CALL (value is the exception when not ok)
    (STOP,)

Result = (trial_id, state, values, ops, error)
    state: "complete" | "pruned" | "fail";  error: None | (exc or None, repr, traceback, caught)
Ops are ("param", name, dist, value) | ("report", step, value) | ("user_attr", key, value)
    | ("constraint", key, value), applied in order before the request or the result.
"""

from typing import Any

HELLO = "hello"
NEXT = "next"
CALL = "call"
OPS = "ops"
FAILED = "failed"
BEAT = "beat"  # (BEAT,): still alive, when nothing else was sent for a while

CONFIG = "config"
TRIAL = "trial"
REPLY = "reply"
STOP = "stop"

SUGGEST = "suggest"
PRUNE = "prune"
STUDY_GET = "study_get"
STUDY_CALL = "study_call"
STORAGE = "storage"

COMPLETE = "complete"
PRUNED = "pruned"
FAIL = "fail"


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


def answer_storage(storage: Any, request: tuple) -> Any:
    """The coordinator's answer to ``(STORAGE, method, args, kwargs)``: the call on its
    storage, for the methods of ``STORAGE_METHODS`` only."""
    _, name, args, kwargs = request
    if name not in STORAGE_METHODS:
        raise NotImplementedError(f"storage.{name}() is not available to hub workers")
    return getattr(storage, name)(*args, **kwargs)
