"""Studies built by hand, as tunefleet's workers would have left them, so the report's tests
do not depend on the hub."""

from __future__ import annotations

import math
import random
import time
from typing import Sequence

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend
from optuna.trial import TrialState, create_trial

from tunefleet import _attrs as attrs

DISTRIBUTIONS = {
    "x": FloatDistribution(-5.0, 5.0),
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "layers": IntDistribution(1, 8),
    "opt": CategoricalDistribution(["adam", "sgd", "rmsprop"]),
}


def worker_attrs(worker: str, start: float, end: float | None) -> dict:
    out = {attrs.WORKER: worker, attrs.HOST: worker.split("/")[0], attrs.STARTED: start}
    if end is not None:
        out[attrs.FINISHED] = end
    return out


def fill(study: optuna.Study, n: int, *, workers: int = 3, params: Sequence[str] = ("x", "lr",
         "layers", "opt"), fail_every: int = 0, prune_every: int = 0, running: int = 0,
         duration: float = 10.0, seed: int = 0, end: float | None = None) -> None:
    """Add N finished trials run round-robin by WORKERS workers (plus RUNNING running ones),
    laid out back to back so that the last one finishes at END (default: now)."""
    rng = random.Random(seed)
    end = time.time() if end is None else end
    per_worker = math.ceil(n / workers) if n else 0
    t0 = end - per_worker * duration
    n_obj = len(study.directions)
    trials = []
    for i in range(n):
        w, slot = i % workers, i // workers
        start = t0 + slot * duration + rng.uniform(0, 0.1 * duration)
        finish = start + rng.uniform(0.5, 0.85) * duration
        p = _params(rng, params)
        state = TrialState.COMPLETE
        if fail_every and i % fail_every == fail_every - 1:
            state = TrialState.FAIL
        elif prune_every and i % prune_every == prune_every - 1:
            state = TrialState.PRUNED
        values = None
        if state == TrialState.COMPLETE:
            base = _objective(p)
            values = [base + k * (10 - base) * rng.random() for k in range(n_obj)]
        trials.append(create_trial(
            state=state, params=p, distributions={k: DISTRIBUTIONS[k] for k in p},
            values=values, system_attrs=worker_attrs(f"node{w}/{1000 + w}", start, finish),
            intermediate_values={0: values[0]} if state == TrialState.PRUNED and values else {}))
    for j in range(running):
        p = _params(rng, params)
        trials.append(create_trial(
            state=TrialState.RUNNING, params=p, distributions={k: DISTRIBUTIONS[k] for k in p},
            system_attrs=worker_attrs(f"node{j % workers}/{1000 + j % workers}",
                                      end - (j + 1) * duration, None)))
    study.add_trials(trials)


def _params(rng: random.Random, names: Sequence[str]) -> dict:
    out: dict = {}
    for k in names:
        d = DISTRIBUTIONS[k]
        if isinstance(d, CategoricalDistribution):
            out[k] = rng.choice(d.choices)
        elif isinstance(d, IntDistribution):
            out[k] = rng.randint(d.low, d.high)
        elif d.log:
            out[k] = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
        else:
            out[k] = rng.uniform(d.low, d.high)
    return out


def _objective(p: dict) -> float:
    value = p.get("x", 0.0) ** 2
    value += abs(math.log10(p["lr"]) + 3) if "lr" in p else 0.0
    value += 0.1 * p.get("layers", 0)
    value += {"adam": 0.0, "sgd": 0.5, "rmsprop": 0.2}.get(p.get("opt"), 0.0)
    return value


def new_study(directions: Sequence[str] = ("minimize",), storage: str | None = None,
              name: str = "demo") -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=name, directions=list(directions))


class _MemoryJournal(BaseJournalBackend):
    """Journal logs kept in a list, written to a file in one go by ``journal_study``."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def read_logs(self, log_number_from: int) -> list[dict]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict]) -> None:
        self.logs.extend(logs)


def journal_study(path: str, n: int, directions: Sequence[str] = ("minimize",),
                  name: str = "demo", **fill_options: object) -> str:
    """Write a study of N trials (see ``fill``) as an Optuna journal file and return its URL.

    Adding trials one by one through Optuna's RDB storage costs tens of milliseconds each
    (minutes for 10,000 on a loaded machine); built in memory and written once, it takes seconds.
    """
    backend = _MemoryJournal()
    study = new_study(directions, storage=optuna.storages.JournalStorage(backend), name=name)
    fill(study, n, **fill_options)  # type: ignore[arg-type]
    JournalFileBackend(path).append_logs(backend.logs)
    return f"journal://{path}"
