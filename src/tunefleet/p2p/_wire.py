"""What peers say to each other: JSON messages, HMAC-SHA256 tagged when a key is shared.

A message is three ZeroMQ frames: the protocol name, the tag (empty without a key) and the JSON
body. The tag is checked before the body is even parsed, nothing is ever unpickled, and every
field is checked, so a stranger's bytes can only be dropped (``WireError``), never run. No
message is larger than ``MAX_MESSAGE`` (ZeroMQ refuses longer ones before they are buffered),
so that is all an outsider can make a peer hold before the tag is checked; with a key, an
outsider does not even pass the CurveZMQ handshake (``curve_keys``), so none of its messages
is read at all. With a key, every
body also names its addressee, its sender's incarnation and sequence number and the time it was
sent, so a recorded message replayed later, or to another peer, is dropped (``ReplayGuard``).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from typing import Any, Callable, NamedTuple

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from tunefleet import _attrs as attrs

PROTOCOL = b"tunefleet-p2p/1"
TYPES = ("join", "welcome", "refuse", "gossip", "trials", "final", "bye")
MAX_TRIALS_PER_MESSAGE = 500
MAX_MESSAGE = 256 * 1024  # bytes of one message, body and tag; trials are sent in chunks below it
REPLAY_WINDOW = 60.0  # seconds: a keyed message sent longer ago (by its sender's clock) is dropped
_COPIED_ATTRS = (attrs.WORKER, attrs.HOST, attrs.STARTED, attrs.FINISHED)
# study system attribute: the token in this peer's own trial keys (see ``study_token``)
TOKEN_ATTR = "tunefleet:p2p_token"
_TOKEN = re.compile(r"^[0-9a-f]{1,32}$")
_KEY_REST = re.compile(r"^(?:[0-9a-f]{1,32}\.)?[0-9]+$")  # [TOKEN.]number


class WireError(ValueError):
    """A message that is not ours, not authentic or not well formed: it is dropped."""


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, PROTOCOL + body, hashlib.sha256).digest()


def encode(message: dict[str, Any], key: bytes | None) -> list[bytes]:
    return frames(json.dumps(message, separators=(",", ":"), allow_nan=True).encode(), key)


def frames(body: bytes, key: bytes | None) -> list[bytes]:
    """The three frames of an encoded BODY (the tag covers the protocol name and the body)."""
    return [PROTOCOL, _tag(key, body) if key else b"", body]


def decode(frames: list[bytes], key: bytes | None) -> dict[str, Any]:
    """Check and parse a received message; raise WireError for anything else."""
    if len(frames) != 3 or frames[0] != PROTOCOL:
        raise WireError("not a tunefleet peer message")
    tag, body = frames[1], frames[2]
    if key is not None and not hmac.compare_digest(tag, _tag(key, body)):
        raise WireError("bad or missing HMAC tag (different key?)")
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WireError("body is not JSON") from None
    if not isinstance(message, dict) or message.get("type") not in TYPES:
        raise WireError("unknown message type")
    if not isinstance(message.get("from"), str) or not message["from"]:
        raise WireError("message has no sender")
    return message


def curve_keys(key: bytes) -> tuple[bytes, bytes]:
    """The swarm's CurveZMQ key pair (public, secret), derived from the shared key.

    Every peer listens as a CURVE server with it and connects as a client with it. The server's
    public key never crosses the network and cannot be had without the shared key, so only a
    holder of that key can complete the handshake: an outsider's connection is closed before
    any of its messages is accepted.
    """
    import zmq
    from zmq.utils import z85

    secret = z85.encode(hashlib.sha256(b"tunefleet-p2p/curve\0" + key).digest())
    return zmq.curve_public(secret), secret


class ReplayGuard:
    """Drops authentic messages seen before, sent too long ago, or meant for another peer.

    Each sender numbers its messages (``seq``) within its incarnation (``inc``, its start time).
    A number seen before from that sender, one more than ``REORDER`` below the highest seen, or
    an older incarnation is a replay. Numbers may arrive out of order: a sender that reopens
    its connection to us (after dropping us for a while) has messages on two connections at
    once. ``ts`` bounds how old a message may be (clocks must agree within ``window``).
    """

    REORDER = 4096

    def __init__(self, uid: str, window: float = REPLAY_WINDOW,
                 clock: Callable[[], float] = time.time) -> None:
        self.uid = uid
        self.window = window
        self.clock = clock
        self._last: dict[str, tuple[int, int]] = {}  # sender: (incarnation, highest seq)
        self._seen: dict[str, set[int]] = {}  # sender: seqs seen within REORDER of the highest

    def check(self, message: dict[str, Any]) -> None:
        sender = message["from"]
        to, inc, seq = message.get("to"), field(message, "inc", int), field(message, "seq", int)
        ts = _finite(message.get("ts"), "send time")
        if to != self.uid and message["type"] != "join":  # a join names the seed as -s says
            raise WireError(f"replayed or misdirected: meant for {to!r}")
        if abs(self.clock() - ts) > self.window:
            raise WireError(f"replayed or clock off: sent {self.clock() - ts:.0f} s ago")
        last = self._last.get(sender)
        if last is None or inc > last[0]:
            self._last[sender], self._seen[sender] = (inc, seq), {seq}
            return
        seen = self._seen[sender]
        if inc < last[0] or seq <= last[1] - self.REORDER or seq in seen:
            raise WireError(f"replayed: message {seq} of {sender!r} seen before")
        seen.add(seq)
        if seq > last[1]:
            self._last[sender] = (inc, seq)
            if len(seen) > 2 * self.REORDER:
                self._seen[sender] = {n for n in seen if n > seq - self.REORDER}


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """message[name], which must be of type KIND (bool is never taken for a number)."""
    value = message.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise WireError(f"field {name!r} missing or not {kind}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


# ---- trials as plain data ------------------------------------------------------------------

def new_token() -> str:
    """A local study's incarnation token: random, so a peer restarted under its UID (a new
    study in memory) never reuses the trial keys of its earlier life, whatever the clocks."""
    return secrets.token_hex(6)


def study_token(study: optuna.Study) -> str:
    """The token of STUDY's own trial keys, chosen once when the study is first used by a peer:
    a study continued from ``--storage`` keeps it (its trial numbers go on), a new one gets its
    own."""
    storage, sid = study._storage, study._study_id
    token = storage.get_study_system_attrs(sid).get(TOKEN_ATTR)
    if not isinstance(token, str) or not _TOKEN.match(token):
        token = new_token()
        storage.set_study_system_attr(sid, TOKEN_ATTR, token)
    return token


def trial_key(trial: FrozenTrial, own_uid: str, token: str = "") -> str:
    """``UID#TOKEN.number`` of the peer that ran the trial first: the same everywhere, and
    never reused, since a new local study (a restarted peer's) gets a new TOKEN. Trials
    received keep the key they came with."""
    origin = trial.system_attrs.get(attrs.ORIGIN)
    if origin:
        return str(origin)
    return f"{own_uid}#{token}.{trial.number}" if token else f"{own_uid}#{trial.number}"


def fingerprint(trial: FrozenTrial) -> str:
    """What a trial record says (values and parameters), in short: two records under one key
    that say different things (a restarted or misbehaving peer) are told apart by it."""
    text = json.dumps([list(trial.values), trial.params], sort_keys=True, allow_nan=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Record(NamedTuple):
    """One trial record as a peer holds it: its key and what it says (``fingerprint``)."""

    key: str
    fingerprint: str


def record_of(trial: FrozenTrial, own_uid: str, token: str = "") -> Record:
    return Record(trial_key(trial, own_uid, token), fingerprint(trial))


def split_key(key: str) -> tuple[str, str]:
    """(origin UID, rest) of a trial key; WireError unless it is ``UID#[TOKEN.]number``."""
    origin, sep, rest = key.rpartition("#")
    if not sep or not origin or not _KEY_REST.match(rest):
        raise WireError(f"bad trial key {key!r}")
    return origin, rest


def _ts(when: datetime.datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def trial_to_payload(trial: FrozenTrial, own_uid: str, token: str = "") -> dict[str, Any]:
    """A completed trial as JSON-ready data; the origin of a received trial is kept."""
    system = {k: trial.system_attrs[k] for k in _COPIED_ATTRS if k in trial.system_attrs}
    system.setdefault(attrs.WORKER, own_uid)
    return {
        "key": trial_key(trial, own_uid, token),
        "params": trial.params,
        "dists": {n: distribution_to_json(d) for n, d in trial.distributions.items()},
        "values": list(trial.values),
        "inter": {str(s): v for s, v in trial.intermediate_values.items()},
        "user_attrs": {k: v for k, v in trial.user_attrs.items() if _json_safe(v)},
        "system": system,
        "start": _ts(trial.datetime_start),
        "end": _ts(trial.datetime_complete),
    }


def _finite(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        raise WireError(f"{what} is not a number")
    return float(x)


def _when(x: Any) -> datetime.datetime | None:
    if x is None:
        return None
    try:
        return datetime.datetime.fromtimestamp(_finite(x, "timestamp"))
    except (OverflowError, OSError, ValueError):
        raise WireError(f"timestamp {x!r} is out of range") from None


def payload_to_trial(p: Any, sender: str) -> tuple[str, FrozenTrial]:
    """Rebuild a received trial, marked with its origin; WireError when it does not hold up."""
    if not isinstance(p, dict):
        raise WireError("trial is not an object")
    key = field(p, "key", str)
    origin = split_key(key)[0]
    params, dists = field(p, "params", dict), field(p, "dists", dict)
    values = [_finite(v, "value") for v in field(p, "values", list)]
    system_in = field(p, "system", dict)
    if set(params) != set(dists) or not values:
        raise WireError("trial parameters and distributions do not match")
    try:
        distributions = {str(n): json_to_distribution(d) for n, d in dists.items()}
        inter = {int(s): _finite(v, "intermediate value")
                 for s, v in field(p, "inter", dict).items()}
    except WireError:
        raise
    except Exception as exc:  # json_to_distribution raises several kinds
        raise WireError(f"bad distribution: {exc}") from None
    system: dict[str, Any] = {}
    for k in _COPIED_ATTRS:
        if k in system_in:
            v = system_in[k]
            ok = isinstance(v, str) if k in (attrs.WORKER, attrs.HOST) else isinstance(v, (int, float))
            if ok and not isinstance(v, bool):
                system[k] = v
    system[attrs.WORKER] = origin  # the peer that ran it, whatever the message says
    system[attrs.ORIGIN] = key
    trial = FrozenTrial(
        number=-1, state=TrialState.COMPLETE, value=None,
        datetime_start=_when(p.get("start")), datetime_complete=_when(p.get("end")),
        params=params, distributions=distributions,
        user_attrs=field(p, "user_attrs", dict), system_attrs=system,
        intermediate_values=inter, trial_id=-1, values=values,
    )
    try:
        trial._validate()
    except Exception as exc:  # a parameter outside its distribution, ...
        raise WireError(f"invalid trial {key}: {exc}") from None
    return key, trial


def final_best(study: optuna.Study, own_uid: str,
               token: str = "") -> tuple[str, list[FrozenTrial]]:
    """The best trial or the Pareto front, and a digest of it.

    Every peer picks it the same way from the same trials, so equal digests mean the peers
    agree on the global best: the last exchange before ``bye`` goes on until they do. Ties
    go to the smallest key, then the smallest fingerprint: two records under one key (a
    restarted or misbehaving peer's) are both kept, and the better one (by value, then by
    fingerprint) wins everywhere, so agreement stays reachable.
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return "none", []
    if len(study.directions) > 1:
        ranked = sorted((trial_key(t, own_uid, token), fingerprint(t), t)
                        for t in study.best_trials)
        return "|".join(f"{k}:{f}" for k, f, _ in ranked), [t for _, _, t in ranked]
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    value, key = min((sign * t.values[0], trial_key(t, own_uid, token)) for t in done)
    tied = [t for t in done
            if sign * t.values[0] == value and trial_key(t, own_uid, token) == key]
    best = min(tied, key=fingerprint) if len(tied) > 1 else tied[0]
    return f"{best.values[0]!r}|{key}|{fingerprint(best)}", [best]


def best_trials(study: optuna.Study, mode: str, top_k: int) -> list[FrozenTrial]:
    """The trials a peer shares after a round: its best, its k best, or its own completed ones."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return []
    if len(study.directions) > 1:
        front = study.best_trials
        if mode == "all":
            return front + [t for t in done if attrs.ORIGIN not in t.system_attrs and t not in front]
        return front
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    ranked = sorted(done, key=lambda t: sign * t.values[0])
    if mode == "best":
        return ranked[:1]
    if mode == "top-k":
        return ranked[:top_k]
    own = [t for t in done if attrs.ORIGIN not in t.system_attrs]
    return ranked[:1] + [t for t in own if t is not ranked[0]]


def trial_chunks(payloads: list[dict[str, Any]]) -> tuple[list[list[dict[str, Any]]],
                                                         list[tuple[Any, int]]]:
    """PAYLOADS in chunks that each fit a message, and (key, bytes) of those too big for any."""
    chunks: list[list[dict[str, Any]]] = []
    too_big: list[tuple[Any, int]] = []
    chunk: list[dict[str, Any]] = []
    size = 0
    for p in payloads:
        n = len(encode(p, None)[2])
        if n > MAX_MESSAGE // 2:
            too_big.append((p.get("key"), n))
            continue
        if chunk and (size + n > MAX_MESSAGE // 2 or len(chunk) >= MAX_TRIALS_PER_MESSAGE):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(p)
        size += n
    if chunk:
        chunks.append(chunk)
    return chunks, too_big
