"""Every error tunefleet raises to a user is a TunefleetError, and keeps the type Optuna raises
for the same misuse (code written for Study.optimize catches what it caught before)."""

from __future__ import annotations

import optuna
import pytest

import tunefleet
from tunefleet.errors import NotInWorker, OptionError, TunefleetError


def _quadratic(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1, 1) ** 2


@pytest.mark.parametrize("kwargs", [{"n_trials": -1}, {"n_trials": 1, "max_retries": -1},
                                    {"n_trials": 1, "grace": -1.0},
                                    {"n_trials": 1, "worker_timeout": 0.5},
                                    {"n_trials": 1, "n_workers": 0},
                                    {"n_trials": 1, "deterministic": True}])
def test_a_bad_option_is_a_tunefleet_error_and_optunas_value_error(kwargs):
    with pytest.raises(OptionError) as info:
        tunefleet.optimize(optuna.create_study(), _quadratic, **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TunefleetError)


def _asks(trial: optuna.Trial) -> float:
    try:
        trial.study.ask()
    except NotInWorker as exc:
        assert isinstance(exc, RuntimeError) and isinstance(exc, TunefleetError)
        trial.set_user_attr("refused", str(exc))
    return 0.0


def test_study_ask_in_a_worker_is_refused_with_a_tunefleet_error():
    study = optuna.create_study()
    tunefleet.optimize(study, _asks, n_trials=1, n_workers=1)
    assert "not available inside a tunefleet worker" in study.trials[0].user_attrs["refused"]


def test_every_exported_error_is_a_tunefleet_error():
    for name in tunefleet.__all__:
        obj = getattr(tunefleet, name)
        if isinstance(obj, type) and issubclass(obj, BaseException) and name != "Interrupted":
            assert issubclass(obj, TunefleetError), name
