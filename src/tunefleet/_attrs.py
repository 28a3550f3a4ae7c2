"""Names of the trial system attributes tunefleet records, in every mode.

They live in ``FrozenTrial.system_attrs`` so that the user's own ``user_attrs`` stay untouched.
The report and ``tunefleet status`` read them to draw the per-worker timeline.
"""

WORKER = "tunefleet:worker"  # str: which worker ran the trial ("host/pid" or a peer UID)
HOST = "tunefleet:host"  # str: host name of that worker
STARTED = "tunefleet:started"  # float: unix time the worker started running the objective
FINISHED = "tunefleet:finished"  # float: unix time the worker finished it
FAIL_REASON = "tunefleet:fail_reason"  # str: why a trial failed outside the objective
RETRY_OF = "tunefleet:retry_of"  # int: number of the trial this one repeats
RETRY_COUNT = "tunefleet:retry"  # int: how many times these parameters were retried
HEARTBEAT = "tunefleet:heartbeat"  # float: last unix time a storage-mode worker said it was alive
VOID = "tunefleet:void"  # bool: ended unrun because the study's budget was already taken
ORIGIN = "tunefleet:origin"  # str: "UID#number" of a trial a peer received (p2p): who ran it first
MODE = "tunefleet:mode"  # str: "hub", "storage" or "p2p" (study-level system attribute)
