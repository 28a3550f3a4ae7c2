"""backend="ray": hub workers as long-lived tasks of a local Ray, started once for the module."""

from __future__ import annotations

import pytest

from tests.remote.engines import run_60_trials, run_with_a_killed_worker, run_with_setup

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def test_a_60_trial_study_on_ray():
    run_60_trials("ray")
    assert ray.is_initialized()  # the caller's Ray is left running


def test_a_killed_ray_worker_fails_its_trial_which_is_retried():
    run_with_a_killed_worker("ray")


def test_setup_runs_once_per_ray_worker(tmp_path):
    run_with_setup("ray", tmp_path)
