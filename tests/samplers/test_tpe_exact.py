"""tunefleet's TPESampler proposes exactly what Optuna's TPESampler proposes.

Each case runs the same sequence of trials (same objective, same seed, same ask/tell order) once
with ``optuna.samplers.TPESampler`` and once with ``tunefleet.samplers.TPESampler`` on separate
in-memory studies, and requires every trial's parameters, state and values to be identical.
The sequences are long enough (n_startup_trials + 30 or more) that TPE proper makes most of the
proposals.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tunefleet.samplers import TPESampler
from tunefleet.samplers import _tpe

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():  # experimental / deprecated arguments of Optuna's TPE
        warnings.simplefilter("ignore")
        yield


def mixed(trial: optuna.Trial) -> float:
    """Every distribution kind TPE handles."""
    x = trial.suggest_float("x", -5, 5)
    lg = trial.suggest_float("lg", 1e-3, 10, log=True)
    st = trial.suggest_float("st", 0, 1, step=0.1)
    i = trial.suggest_int("i", -3, 10)
    il = trial.suggest_int("il", 1, 64, log=True)
    i2 = trial.suggest_int("i2", 0, 20, step=4)
    c = trial.suggest_categorical("c", ["a", "b", None, 3])
    return (x - 1) ** 2 + math.log(lg) ** 2 + st + (i - 3) ** 2 + abs(math.log2(il) - 3) \
        + abs(i2 - 8) + (0 if c == "b" else 1)


def quadratic(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -5, 5) ** 2 + trial.suggest_float("y", -5, 5) ** 2


def tied(trial: optuna.Trial) -> float:
    """Few distinct values: the below/above split must break ties exactly as Optuna does."""
    x = trial.suggest_int("x", 0, 6)
    y = trial.suggest_float("y", -1, 1)
    return float(round(abs(x - 3) + abs(y)))


def conditional(trial: optuna.Trial) -> float:
    """A search space that changes with a choice (group / univariate / dynamic spaces)."""
    kind = trial.suggest_categorical("kind", ["lin", "sq", "abs"])
    if kind == "lin":
        return trial.suggest_float("a", -2, 2) + 2
    if kind == "sq":
        return trial.suggest_float("b", -3, 3) ** 2 + trial.suggest_int("n", 0, 5)
    return abs(trial.suggest_float("c", -1, 1)) + 0.5


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0, 1)
    y = trial.suggest_float("y", 0, 1)
    c = trial.suggest_categorical("c", [0, 1, 2])
    return x + 0.1 * c, (1 - x) ** 2 + y


def constrained(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -3, 3)
    y = trial.suggest_float("y", -3, 3)
    trial.set_constraint("circle", x * x + y * y - 2)
    return x + y


def pruned(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -4, 4)
    y = trial.suggest_int("y", 0, 8)
    for step in range(3):
        trial.report((x - 1) ** 2 + y + 3 - step, step)
        if x > 2 and step == 1 or (trial.number % 7 == 3 and step == 2):
            raise optuna.TrialPruned()
    if trial.number % 11 == 5:
        raise ValueError("a failed trial")
    return (x - 1) ** 2 + y


def run(sampler: optuna.samplers.BaseSampler, objective: Callable[..., Any], n_trials: int,
        directions: list[str] | None = None, batch: int = 1) -> list[tuple[Any, ...]]:
    """Run N_TRIALS, BATCH trials asked before any is told (as parallel workers would), and
    return what every trial ended with."""
    study = optuna.create_study(sampler=sampler, directions=directions or ["minimize"])
    while len(study.trials) < n_trials:
        trials = [study.ask() for _ in range(batch)]
        outcomes = []
        for trial in trials:
            try:
                outcomes.append((TrialState.COMPLETE, objective(trial)))
            except optuna.TrialPruned:
                outcomes.append((TrialState.PRUNED, None))
            except ValueError:
                outcomes.append((TrialState.FAIL, None))
        for trial, (state, value) in zip(trials, outcomes):
            study.tell(trial, value, state=state)
    return [(t.number, t.state, t.params, t.values) for t in study.trials]


CASES: dict[str, tuple[dict[str, Any], Callable[..., Any], dict[str, Any]]] = {
    # name: (sampler kwargs, objective, run kwargs)
    "default": ({}, mixed, {}),
    "univariate": ({"multivariate": False}, mixed, {}),
    "no_liar": ({"constant_liar": False}, mixed, {}),
    "liar_parallel": ({"constant_liar": True}, quadratic, {"batch": 4}),
    "liar_parallel_univariate": ({"constant_liar": True, "multivariate": False}, mixed,
                                 {"batch": 3}),
    "no_liar_parallel": ({"constant_liar": False}, quadratic, {"batch": 4}),
    "group": ({"multivariate": True, "group": True}, conditional, {}),
    "group_parallel": ({"multivariate": True, "group": True}, conditional, {"batch": 3}),
    "dynamic_univariate": ({"multivariate": False}, conditional, {}),
    "dynamic_multivariate": ({"multivariate": True}, conditional, {}),
    "ties": ({}, tied, {}),
    "ties_univariate": ({"multivariate": False}, tied, {}),
    "maximize": ({}, mixed, {"directions": ["maximize"]}),
    "multi_objective": ({}, two_objectives, {"directions": ["minimize", "minimize"]}),
    "multi_objective_multivariate": ({"multivariate": True}, two_objectives,
                                     {"directions": ["minimize", "maximize"]}),
    "constraints": ({}, constrained, {}),
    "constraints_func": ({"constraints_func": lambda t: (t.params["x"] - t.params["y"],)},
                         quadratic, {}),
    "pruned_and_failed": ({}, pruned, {}),
    "options": ({"consider_endpoints": True, "n_startup_trials": 4, "n_ei_candidates": 7,
                 "prior_weight": 0.5, "consider_magic_clip": False}, mixed, {}),
    "gamma_weights": ({"gamma": lambda n: min(n // 3 + 1, 40),
                       "weights": lambda n: np.linspace(0.5, 1.0, n)}, quadratic, {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_proposes_exactly_what_optuna_proposes(name: str) -> None:
    kwargs, objective, run_kwargs = CASES[name]
    n_trials = 45
    theirs = run(optuna.samplers.TPESampler(seed=3, **kwargs), objective, n_trials, **run_kwargs)
    ours = run(TPESampler(seed=3, **kwargs), objective, n_trials, **run_kwargs)
    assert len(ours) == len(theirs)
    for a, b in zip(theirs, ours):
        assert a == b, f"trial {a[0]} differs"
    # the case really exercised TPE proper, not only the random startup trials
    assert sum(state == TrialState.COMPLETE for _, state, _, _ in ours) > 15


def test_several_studies_do_not_share_a_table() -> None:
    """One sampler alternating between two in-memory studies (both with study id 0) proposes
    what one Optuna sampler does: each study's trials are kept apart."""

    def alternate(sampler: optuna.samplers.BaseSampler) -> list[dict[str, Any]]:
        studies = [optuna.create_study(sampler=sampler),
                   optuna.create_study(sampler=sampler, direction="maximize")]
        for _ in range(30):
            for study in studies:
                study.optimize(quadratic, n_trials=1)
        return [t.params for study in studies for t in study.trials]

    kwargs = {"multivariate": False, "seed": 5}  # univariate: no per-study search-space state
    assert alternate(TPESampler(**kwargs)) == alternate(optuna.samplers.TPESampler(**kwargs))


def test_each_finished_trial_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table ingests a finished trial once, however many asks follow."""
    ingested: list[int] = []
    original = _tpe._TrialTable._ingest

    def counting(self: _tpe._TrialTable, trial: optuna.trial.FrozenTrial, study: Any) -> None:
        ingested.append(trial.number)
        original(self, trial, study)

    monkeypatch.setattr(_tpe._TrialTable, "_ingest", counting)
    study = optuna.create_study(sampler=TPESampler(seed=0, multivariate=False))
    study.optimize(mixed, n_trials=40)  # 7 params: up to 7 asks to the table per trial
    assert sorted(ingested) == list(range(39))  # the last trial finished after its asks


@pytest.mark.parametrize("multivariate", [True, False])
def test_large_study_with_ties_and_resumed_sampler(multivariate: bool) -> None:
    """Hundreds of trials added in bulk (integer parameters, tied values) are picked up, and a
    pickled sampler (a fresh table) continues exactly as Optuna's does."""
    rng = np.random.default_rng(1)
    dists = {"x": optuna.distributions.FloatDistribution(-5, 5),
             "i": optuna.distributions.IntDistribution(0, 12),
             "c": optuna.distributions.CategoricalDistribution(["a", "b", "c"])}
    added = [optuna.trial.create_trial(
        params={"x": float(x), "i": int(i), "c": "abc"[int(c)]}, distributions=dists,
        value=float(round(x * x) + abs(i - 4)))
        for x, i, c in zip(rng.uniform(-5, 5, 700), rng.integers(0, 13, 700),
                           rng.integers(0, 3, 700))]

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        i = trial.suggest_int("i", 0, 12)
        trial.suggest_categorical("c", ["a", "b", "c"])
        return float(round(x * x) + abs(i - 4))

    def go(sampler: optuna.samplers.BaseSampler) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=sampler)
        study.add_trials(added)
        study.optimize(objective, n_trials=8)
        study.sampler = pickle.loads(pickle.dumps(study.sampler))
        for _ in range(4):  # two at a time: the constant liar sees a running trial
            pair = [study.ask(), study.ask()]
            values = [objective(t) for t in pair]
            for t, v in zip(pair, values):
                study.tell(t, v)
        return [t.params for t in study.trials[700:]]

    kwargs = {"seed": 2, "multivariate": multivariate}
    assert go(TPESampler(**kwargs)) == go(optuna.samplers.TPESampler(**kwargs))


def test_fast_log_pdf_matches_optuna() -> None:
    """The numpy density equals Optuna's ``_ParzenEstimator.log_pdf`` to rounding, for every
    distribution kind, many kernels, and samples with zero density."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.samplers._tpe.parzen_estimator import (
        _ParzenEstimator,
        _ParzenEstimatorParameters,
    )
    from optuna.samplers._tpe.sampler import default_weights

    rng = np.random.default_rng(0)
    space = {"f": FloatDistribution(-2, 3), "lf": FloatDistribution(1e-2, 1e2, log=True),
             "sf": FloatDistribution(0, 2, step=0.25), "i": IntDistribution(0, 9),
             "li": IntDistribution(1, 100, log=True), "c": CategoricalDistribution([0, 1, 2])}
    n = 400
    obs = {"f": rng.uniform(-2, 3, n), "lf": np.exp(rng.uniform(np.log(1e-2), np.log(1e2), n)),
           "sf": rng.integers(0, 9, n) * 0.25, "i": rng.integers(0, 10, n).astype(float),
           "li": rng.integers(1, 101, n).astype(float), "c": rng.integers(0, 3, n).astype(float)}
    for prior_weight in (1.0, 0.0):
        params = _ParzenEstimatorParameters(prior_weight, True, False, default_weights, True)
        mpe = _ParzenEstimator(obs, space, params)
        samples = mpe.sample(np.random.RandomState(0), 50)
        assert np.allclose(_tpe._fast_log_pdf(mpe, samples), mpe.log_pdf(samples),
                           rtol=1e-10, atol=1e-10)
    # a categorical choice no kernel has (prior weight 0): density zero, log -inf, as Optuna
    single = {"c": CategoricalDistribution([0, 1, 2])}
    params = _ParzenEstimatorParameters(0.0, True, False, default_weights, True)
    mpe = _ParzenEstimator({"c": np.array([0.0, 1.0, 0.0])}, single, params)
    samples = {"c": np.array([0.0, 2.0, 1.0])}
    expected = mpe.log_pdf(samples)
    assert np.isneginf(expected[1])
    assert np.array_equal(np.isneginf(_tpe._fast_log_pdf(mpe, samples)), np.isneginf(expected))
    assert np.allclose(_tpe._fast_log_pdf(mpe, samples)[[0, 2]], expected[[0, 2]])


def test_same_constructor_as_optuna() -> None:
    """Drop-in: the same keyword arguments with the same defaults."""
    import inspect

    ours = inspect.signature(TPESampler.__init__).parameters
    theirs = inspect.signature(optuna.samplers.TPESampler.__init__).parameters
    assert list(ours) == list(theirs)
    for name, p in theirs.items():
        assert ours[name].default == p.default and ours[name].kind == p.kind, name
    assert isinstance(TPESampler(), optuna.samplers.TPESampler)


def test_bandwidths_use_the_tables_sort_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """With distinct float observations the 'above' estimator takes its sort order from the
    trial table (no np.argsort of every observation per ask), and with ties (integers) it
    falls back to np.argsort, whose tie order Optuna's bandwidths depend on."""
    used: list[tuple[int, bool]] = []
    original = _tpe._ParzenEstimatorFastSigmas._sorted_indices

    def spy(self: Any, mus: np.ndarray) -> np.ndarray:
        order = original(self, mus)
        used.append((len(mus), order is self._presort))
        return order

    monkeypatch.setattr(_tpe._ParzenEstimatorFastSigmas, "_sorted_indices", spy)
    rng = np.random.default_rng(0)
    dists = {"x": optuna.distributions.FloatDistribution(-5, 5),
             "i": optuna.distributions.IntDistribution(0, 5)}
    study = optuna.create_study(sampler=TPESampler(seed=0))
    study.add_trials([optuna.trial.create_trial(
        params={"x": float(x), "i": int(i)}, distributions=dists, value=float(x * x + i))
        for x, i in zip(rng.uniform(-5, 5, 300), rng.integers(0, 6, 300))])
    for _ in range(3):
        pair = [study.ask(), study.ask()]  # a running trial joins the 'above' observations
        for t in pair:
            study.tell(t, t.suggest_float("x", -5, 5) ** 2 + t.suggest_int("i", 0, 5))
    large = [presorted for n, presorted in used if n > 250]
    assert len(large) == 12  # 6 asks x the 2 parameters, in name order (i, x)
    assert large[0::2] == [False] * 6  # i: ties, np.argsort
    assert large[1::2] == [True] * 6  # x: the table's order


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_persistent_storages(kind: str, tmp_path: Any) -> None:
    """The fleet's storages (RDB through Optuna's cache, journal file): same proposals, with
    two trials running at a time."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    def go(sampler: optuna.samplers.BaseSampler, name: str) -> list[dict[str, Any]]:
        storage: Any = (f"sqlite:///{tmp_path}/{name}.db" if kind == "sqlite"
                        else JournalStorage(JournalFileBackend(str(tmp_path / f"{name}.log"))))
        study = optuna.create_study(sampler=sampler, storage=storage)
        for _ in range(14):
            pair = [study.ask(), study.ask()]
            for t in pair:
                study.tell(t, t.suggest_float("x", -5, 5) ** 2 + t.suggest_int("i", 0, 9))
        return [t.params for t in study.trials]

    assert go(TPESampler(seed=4), "ours") == go(optuna.samplers.TPESampler(seed=4), "theirs")


@pytest.mark.parametrize("kind", ["float", "int"])
def test_near_ties_are_settled_as_optuna(kind: str) -> None:
    """Candidates far from every observation score log(prior weight ratio) up to a few ulps:
    near ties, common late in a study (Rosenbrock-4 has them from about trial 500). The fast
    acquisition values are within ~1e-12 of Optuna's, which would decide such ties at random;
    the argmax is re-decided on Optuna's own values, so it is Optuna's, bit for bit."""
    from optuna.distributions import FloatDistribution, IntDistribution

    rng = np.random.default_rng(0)
    dist = FloatDistribution(-100, 100) if kind == "float" else IntDistribution(-100, 100)
    space = {k: dist for k in "abcd"}

    def observations(n: int) -> dict[str, np.ndarray]:
        return {k: np.round(rng.normal(0, 1, n)) if kind == "int" else rng.normal(0, 1, n)
                for k in space}

    params = TPESampler()._parzen_estimator_parameters
    below = _tpe._ParzenEstimatorFastSigmas(observations(25), space, params)
    above = _tpe._ParzenEstimatorFastSigmas(observations(300), space, params)
    sampler = TPESampler()
    by_chance = 0
    for _ in range(20):
        far = rng.uniform(30, 100, (24, 4)) * rng.choice([-1, 1], (24, 4))
        samples = {k: np.round(far[:, i]) if kind == "int" else far[:, i]
                   for i, k in enumerate(space)}
        exact = below.log_pdf(samples) - above.log_pdf(samples)
        assert np.ptp(exact) < 1e-12  # every candidate ties up to rounding
        fast = _tpe._fast_log_pdf(below, samples) - _tpe._fast_log_pdf(above, samples)
        assert np.allclose(fast, exact, rtol=0, atol=1e-10)
        fast += rng.normal(0, 1e-12, fast.shape)  # rounding that differs from Optuna's
        by_chance += int(np.argmax(fast) == np.argmax(exact))
        settled = sampler._settle_near_ties(samples, fast, below, above, space)
        assert np.argmax(settled) == np.argmax(exact)
    assert by_chance < 10  # the unsettled values would have picked another candidate
