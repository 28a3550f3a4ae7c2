"""The hub's wire protocol: what each message tuple means.

A trial costs one round trip in the common case: the worker's ``NEXT`` carries the result of its
previous trial and asks for the next one, and the coordinator's ``TRIAL`` reply carries values
for the parameters the study has seen before, sampled at ask time. Only a parameter the
coordinator could not foresee, ``should_prune`` and ``trial.study`` need a round trip of their own.

Worker -> coordinator
    (HELLO, info)                      info: {"pid", "host"}
    (NEXT, result | None)              result: Result tuple, see below
    (CALL, trial_id, ops, request)     request: (SUGGEST, name, dist) | (PRUNE,) | (STUDY, ...)
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

HELLO = "hello"
NEXT = "next"
CALL = "call"
OPS = "ops"
FAILED = "failed"

CONFIG = "config"
TRIAL = "trial"
REPLY = "reply"
STOP = "stop"

SUGGEST = "suggest"
PRUNE = "prune"
STUDY_GET = "study_get"
STUDY_CALL = "study_call"

COMPLETE = "complete"
PRUNED = "pruned"
FAIL = "fail"
