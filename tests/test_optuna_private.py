"""Optuna's private names that tunefleet uses (tunefleet/_optuna.py) still exist, with the shape
tunefleet expects. A new Optuna release that moves one fails here first, naming it; scripts/test
runs this on the oldest supported Optuna 4.x as well as on the installed one."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import optuna
import pytest

from tunefleet import _optuna as O


def _resolve(dotted: str):
    obj = optuna
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(f"{obj.__name__}.{part}")
    return obj


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_supported_version():
    assert (4, 0) <= O.VERSION < (6, 0), f"tunefleet supports optuna>=4.0,<6, not {optuna.__version__}"


def test_callables_have_expected_parameters():
    assert _params(O.is_heartbeat_enabled) == ["storage"]
    assert _params(O._tell_with_warning)[:6] == ["study", "trial", "value_or_values", "state",
                                                 "skip_if_finished", "suppress_warning"]
    assert _params(O.pareto_front)[:2] == ["trials", "directions"]
    assert _params(O.filter_study) == ["study", "trial"]
    assert _params(O.single_value) == ["distribution"]
    assert _params(optuna.Study._log_completed_trial) == (
        ["self", "values", "number", "params"] if O.VERSION >= (5, 0) else ["self", "trial"])
    assert callable(O.optuna_warn)
    storage = optuna.storages.RDBStorage("sqlite://", heartbeat_interval=60)
    assert O.stale_trial_callback(storage) is None


def test_study_and_sampler_helpers():
    study = optuna.create_study(sampler=optuna.samplers.PartialFixedSampler(
        {}, optuna.samplers.TPESampler(multivariate=True)))
    assert isinstance(O.wrapped_sampler(study.sampler), optuna.samplers.TPESampler)
    assert O.tpe_is_multivariate(O.wrapped_sampler(study.sampler), study)
    assert not O.tpe_is_multivariate(optuna.samplers.TPESampler(multivariate=False), study)
    assert O.pop_waiting_trial_id(study) is None
    study.enqueue_trial({"x": 1.0})
    trial_id = O.pop_waiting_trial_id(study)
    assert study._storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING
    assert inspect.isclass(O.ThreadLocalStudyAttribute)
    assert isinstance(study._thread_local, O.ThreadLocalStudyAttribute)


@pytest.mark.skipif(not hasattr(optuna.Trial, "set_constraint"), reason="Optuna before 5.1")
def test_constraint_attr_is_where_set_constraint_writes():
    trial = optuna.create_study().ask()
    trial.set_constraint("c", 1.5)
    assert trial.storage.get_trial_system_attrs(trial._trial_id)[O.constraint_attr("c")] == 1.5


def test_storage_location(tmp_path):
    journal = str(tmp_path / "j.log")
    assert O.storage_location(optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(journal))) == journal
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert O.storage_location(optuna.create_study(storage=url)._storage) == url
    assert O.storage_location(optuna.storages.InMemoryStorage()) is None


def test_classes():
    assert inspect.isclass(O.BaseHeartbeat)
    assert issubclass(optuna.storages.RDBStorage, O.BaseHeartbeat)
    assert {"CREATE_STUDY", "CREATE_TRIAL", "SET_TRIAL_PARAM", "SET_TRIAL_STATE_VALUES",
            "SET_TRIAL_INTERMEDIATE_VALUE", "SET_TRIAL_USER_ATTR", "SET_TRIAL_SYSTEM_ATTR",
            "SET_STUDY_USER_ATTR", "SET_STUDY_SYSTEM_ATTR"} <= set(O.JournalOperation.__members__)
    O.CachedStudyInfo()  # atomic.py makes one with no arguments
    assert {"study_name", "direction", "user_attrs", "system_attrs", "study_id"} <= set(
        _params(O.FrozenStudy.__init__)), "FrozenStudy's constructor (hub/_mirror/)"
    rng = O.LazyRandomState(1)
    assert hasattr(rng, "rng")


def test_random_samplers_draw():
    """What tunefleet.samplers.RandomDraw reads: the sampler's state, and the transform's box
    and its way back (tests/samplers/test_random_draw.py checks the values)."""
    sampler = optuna.samplers.RandomSampler(seed=0)
    assert isinstance(sampler._rng, O.LazyRandomState)
    assert _params(optuna.samplers.RandomSampler.sample_independent) == [
        "self", "study", "trial", "param_name", "param_distribution"]
    trans = O.SearchSpaceTransform({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert trans.bounds.shape == (1, 2) and trans.untransform(np.array([0.25])) == {"x": 0.25}
    assert O.untransform_numerical(0.25, optuna.distributions.FloatDistribution(0, 1), True) == 0.25
    assert O.untransform_numerical(
        0.0, optuna.distributions.FloatDistribution(0.5, 2, log=True), True) == 1.0


def test_rdb_models():
    models = O.rdb_models()
    for name, columns in {
        "StudyModel": {"study_id", "study_name"},
        "TrialModel": {"trial_id", "number", "study_id", "state", "datetime_start",
                       "datetime_complete"},
        "TrialParamModel": {"trial_id", "param_name", "param_value", "distribution_json"},
        "TrialValueModel": {"trial_id", "objective", "value", "value_type"},
        "TrialIntermediateValueModel": {"trial_id", "step", "intermediate_value",
                                        "intermediate_value_type"},
        "TrialUserAttributeModel": {"trial_id", "key", "value_json"},
        "TrialSystemAttributeModel": {"trial_id", "key", "value_json"},
        "StudyUserAttributeModel": {"study_id", "key", "value_json"},
        "TrialHeartbeatModel": {"trial_id", "heartbeat"},
    }.items():
        table = getattr(models, name).__table__
        assert columns <= set(table.c.keys()), f"{name}: {columns - set(table.c.keys())}"


@pytest.mark.parametrize("owner", sorted(O.ATTRIBUTES))
def test_private_attributes(owner, tmp_path):
    """Methods on the class; instance attributes on a real instance."""
    cls = _resolve(owner)
    instance = {
        "study.Study": lambda: optuna.create_study(),
        "trial.Trial": lambda: optuna.create_study().ask(),
        "trial.FrozenTrial": lambda: optuna.trial.create_trial(value=1.0),
        "storages.RDBStorage": lambda: optuna.storages.RDBStorage("sqlite://"),
        "storages._cached_storage._CachedStorage":
            lambda: optuna.storages._cached_storage._CachedStorage(
                optuna.storages.RDBStorage("sqlite://")),
        "storages.JournalStorage": lambda: optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))),
        "storages.InMemoryStorage": optuna.storages.InMemoryStorage,
        "samplers.PartialFixedSampler":
            lambda: optuna.samplers.PartialFixedSampler({}, optuna.samplers.RandomSampler()),
        "distributions.BaseDistribution": lambda: optuna.distributions.FloatDistribution(0, 1),
        "samplers.TPESampler": optuna.samplers.TPESampler,
        "storages.journal.JournalFileBackend": lambda: optuna.storages.journal.JournalFileBackend(
            str(tmp_path / "backend.log")),
        "storages.journal._storage.JournalStorageReplayResult":
            lambda: optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                str(tmp_path / "replay.log")))._replay_result,
    }[owner]()
    missing = [name for name in O.ATTRIBUTES[owner]
               if not hasattr(cls, name) and not hasattr(instance, name)]
    assert not missing, f"optuna {optuna.__version__}: {owner} has no {missing}"


def test_tell_with_warning_and_log(caplog):
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    state, values, warning = O.tell_with_warning(study, trial, None,
                                                 suppress_warning=True)
    assert state == optuna.trial.TrialState.FAIL and values is None and "None" in warning
    trial = study.ask()
    state, values, warning = O.tell_with_warning(study, trial, 2.0, suppress_warning=True)
    assert state == optuna.trial.TrialState.COMPLETE and values == [2.0] and warning is None
    optuna.logging.set_verbosity(optuna.logging.INFO)
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level("INFO", logger="optuna"):
            O.log_completed_trial(study, values, trial.number, {"x": 0.5})
    finally:
        optuna.logging.disable_propagation()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert "Trial 1 finished with value: 2.0" in caplog.text


def test_fast_tpe_names():
    """tunefleet's faster TPE needs these (Optuna 5.x); without them it is Optuna's own TPE."""
    from tunefleet.samplers import TPESampler

    if O.VERSION >= (5, 0):
        assert O.FAST_TPE, "tunefleet's TPE lacks Optuna's TPE internals on this Optuna 5.x"
    if not O.FAST_TPE:
        assert TPESampler.__mro__[1] is optuna.samplers.TPESampler
        return
    assert TPESampler.__module__ == "tunefleet.samplers._tpe._sampler"
    for name in ("_get_pruned_trial_score", "_get_infeasible_trial_score",
                 "_solve_hssp_with_cache", "_get_reference_point",
                 "_fast_non_domination_rank", "default_gamma", "default_gamma_multiobjective"):
        assert hasattr(O.tpe_sampler, name), f"optuna.samplers._tpe.sampler.{name}"
    for name in ("_log_gauss_mass", "_log_diff", "_norm_pdf_logC"):
        assert hasattr(O.tpe_truncnorm, name), f"optuna.samplers._tpe._truncnorm.{name}"
    assert _params(O.ParzenEstimator.__init__) == ["self", "observations", "search_space",
                                                   "parameters", "predetermined_weights"]
    for name in ("_calculate_distributions", "_calculate_numerical_distributions", "_transform"):
        assert hasattr(O.ParzenEstimator, name), f"_ParzenEstimator.{name}"
    sampler = optuna.samplers.TPESampler(seed=0)
    for name in ("_compare", "_compute_acquisition_func", "_constant_liar", "_gamma",
                 "_get_params", "_n_ei_candidates", "_n_startup_trials", "_parzen_estimator_cls",
                 "_parzen_estimator_parameters", "_random_sampler", "_rng", "_sample"):
        assert hasattr(sampler, name), f"TPESampler.{name}"
    mpe = O.ParzenEstimator({"x": np.array([0.5])},
                            {"x": optuna.distributions.FloatDistribution(0, 1)},
                            sampler._parzen_estimator_parameters)
    assert hasattr(mpe, "_mixture_distribution"), "_ParzenEstimator._mixture_distribution"


def test_positional_load_study_with_tunefleet(tmp_path):
    """Seed code written for Optuna 4.x (``optuna.load_study("name", storage)``) runs next to
    tunefleet on Optuna 4.x; Optuna 5 itself takes those arguments by keyword only, and
    tunefleet does not patch Optuna's API."""
    import warnings

    import tunefleet  # noqa: F401

    storage = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    optuna.create_study(study_name="seed", storage=storage)
    if O.VERSION >= (5, 0):
        with pytest.raises(TypeError):
            optuna.load_study("seed", storage)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        study = optuna.load_study("seed", storage)
    assert study.study_name == "seed"


def test_journal_lock_breaks_a_dead_holders_lock(tmp_path):
    """A SIGKILLed coordinator leaves the journal's lock file behind: the lock tunefleet opens
    journals with breaks it once unchanged for its grace period (Optuna 4.0's waits forever)."""
    import os
    import time

    path = str(tmp_path / "study.log")
    lock = O.journal_file_lock(path)
    assert lock.grace_period == 30
    lock.grace_period = 1
    open(path + ".lock", "w").close()
    started = time.monotonic()
    assert lock.acquire()
    assert time.monotonic() - started < 20
    lock.release()
    assert not os.path.exists(path + ".lock")
