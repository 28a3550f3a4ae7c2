"""The durable hub: what the progress bar or a callback counted is in the storage, whatever
happens to the coordinator (SIGKILL at a random moment, SIGTERM, Ctrl-C once or twice), and
rerunning the same command finishes the budget with nothing left RUNNING.

Real processes (``python -m tunefleet run``) on real SQLite, journal files, PostgreSQL and
MariaDB. The kill moments are random; the seed is in the test id's output on failure.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tunefleet import _attrs as attrs

HERE = Path(__file__).resolve().parent
OBJECTIVES = HERE / "durable_objectives.py"

pytestmark = pytest.mark.timeout(900)

class Run:
    """``tunefleet run`` as a user starts it, with its stderr read as it comes."""

    SHOWN = re.compile(r"(\d+)/(\d+) \[")

    def __init__(self, tmp_path: Path, *args: str, code: str | None = None) -> None:
        """``tunefleet run ARGS``; or, with ``code``, that Python program."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        argv = ["-c", code] if code is not None else ["-m", "tunefleet", "run", *args]
        self.proc = subprocess.Popen([sys.executable, *argv],
                                     cwd=tmp_path, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.err = ""
        self.out = ""
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while True:
            chunk = os.read(self.proc.stderr.fileno(), 65536)
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                self.err += chunk.decode(errors="replace")
                self._cond.notify_all()

    def shown(self) -> int:
        """The last count of finished trials the progress bar showed."""
        with self._cond:
            found = self.SHOWN.findall(self.err)
        return int(found[-1][0]) if found else 0

    def wait_for(self, predicate, what: str, timeout: float = 400) -> None:
        def seen() -> bool:
            with self._cond:
                if predicate(self.err):
                    return True
            if self.proc.poll() is not None:
                self._reader.join(30)  # what it said last is read before deciding
                with self._cond:
                    if not predicate(self.err):
                        raise AssertionError(f"never saw {what}; exit {self.proc.poll()}, "
                                             f"stderr: {self.err[-2000:]}")
                return True
            return False

        wait_until(seen, timeout, lambda: f"{what}; stderr: {self.err[-2000:]}", interval=0.05)

    def wait_shown(self, n: int) -> None:
        self.wait_for(lambda err: (lambda f: bool(f) and int(f[-1][0]) >= n)(
            self.SHOWN.findall(err)), f"{n} trials shown")

    def finish(self, timeout: float = 400) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.out = self.proc.stdout.read().decode()
        return code


def states(url: str) -> dict[TrialState, int]:
    storage = optuna.storages.get_storage(url) if not url.startswith("journal") else (
        _journal(url))
    trials = optuna.load_study(study_name="tunefleet", storage=storage).get_trials(deepcopy=False)
    out = {s: 0 for s in TrialState}
    for t in trials:
        out[t.state] += 1
    return out


def _journal(url: str) -> optuna.storages.BaseStorage:
    from tunefleet._studies import open_storage

    return open_storage(url)


def load(url: str) -> optuna.Study:
    from tunefleet._studies import open_storage

    return optuna.load_study(study_name="tunefleet", storage=open_storage(url))


def cli_args(url: str, n_trials: int, name: str = "fast", workers: int = 3, *extra: str) -> list:
    return [f"{OBJECTIVES}:{name}", "--n-trials", str(n_trials), "--workers", str(workers),
            "--storage", url, "--sampler", "random", *extra]


def assert_resumed_exactly(tmp_path: Path, url: str, n_trials: int) -> None:
    """The same command again finishes the budget: exactly n_trials COMPLETE, none RUNNING,
    and the trials the dead coordinator left RUNNING failed with the reason."""
    rerun = Run(tmp_path, *cli_args(url, n_trials), "--no-progress")
    assert rerun.finish() == 0, rerun.err[-3000:]
    study = load(url)
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) == n_trials
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    for t in by_state[TrialState.FAIL]:
        assert "coordinator died" in t.system_attrs[attrs.FAIL_REASON]
    retried = [t for t in trials if attrs.RETRY_OF in t.system_attrs]
    assert len(retried) == len(by_state[TrialState.FAIL])  # each orphan's parameters ran again
    assert [t.number for t in trials] == list(range(len(trials)))


KILL_CASES = [("sqlite", 11), ("sqlite", 23), ("sqlite", 37), ("journal", 5), ("journal", 19),
              ("postgresql", 3), ("mariadb", 7)]


@pytest.mark.parametrize("storage_url,seed", KILL_CASES, indirect=["storage_url"],
                         ids=[f"{k}-{s}" for k, s in KILL_CASES])
def test_sigkill_at_a_random_moment_loses_nothing_counted(tmp_path, storage_url, seed):
    n_trials = 400
    moment = random.Random(seed).randint(5, 300)  # trials shown before the kill
    run = Run(tmp_path, *cli_args(storage_url, n_trials))
    run.wait_shown(moment)
    shown = run.shown()
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    held = states(storage_url)
    assert held[TrialState.COMPLETE] >= shown, (shown, held)
    assert_resumed_exactly(tmp_path, storage_url, n_trials)


FINISHED = re.compile(r"Trial (\d+) finished with value")


@pytest.mark.parametrize("storage_url", ["sqlite", "journal"], indirect=True)
def test_optunas_log_line_is_said_only_for_a_stored_trial(tmp_path, storage_url):
    """``tunefleet.optimize`` with Optuna's INFO log, SIGKILLed mid-run: every trial it logged
    as finished is COMPLETE in the storage (the line comes once the storage holds it)."""
    code = f"""
import optuna, tunefleet, sys
sys.path.insert(0, {str(HERE)!r})
from durable_objectives import fast
optuna.logging.set_verbosity(optuna.logging.INFO)
from tunefleet._studies import open_storage
study = optuna.create_study(study_name="tunefleet", storage=open_storage({storage_url!r}),
                            sampler=optuna.samplers.RandomSampler(seed=0))
tunefleet.optimize(study, fast, n_trials=2000, n_workers=3)
"""
    run = Run(tmp_path, code=code)
    run.wait_for(lambda err: len(FINISHED.findall(err)) >= 150, "150 trials logged")
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    logged = {int(n) for n in FINISHED.findall(run.err)}
    complete = {t.number for t in load(storage_url).get_trials(deepcopy=False,
                                                                states=(TrialState.COMPLETE,))}
    assert logged <= complete, sorted(logged - complete)


@pytest.mark.parametrize("storage_url", ["sqlite", "postgresql"], indirect=True)
def test_sigterm_lets_running_trials_finish_and_exits_143(tmp_path, storage_url):
    n_trials = 60
    run = Run(tmp_path, *cli_args(storage_url, n_trials, "slow", 3, "--grace", "60"))
    run.wait_shown(3)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.err[-3000:]
    shown = run.shown()
    assert "SIGTERM: no new trials" in run.err
    held = states(storage_url)
    # Running trials had their grace period and finished: none failed, none left RUNNING.
    assert held[TrialState.FAIL] == 0 and held[TrialState.RUNNING] == 0
    assert shown <= held[TrialState.COMPLETE] < n_trials
    message = re.search(r"holds (\d+) finished trials", run.err)
    assert message and int(message.group(1)) == held[TrialState.COMPLETE]
    assert "Run the same command again to continue: tunefleet run" in run.err
    assert_resumed_exactly(tmp_path, storage_url, n_trials)


@pytest.mark.parametrize("storage_url", ["sqlite", "journal"], indirect=True)
def test_ctrl_c_twice_closes_running_trials_at_once_and_keeps_what_was_counted(tmp_path,
                                                                                storage_url):
    # Two workers on quick trials, then trials that never end: the first Ctrl-C starts a
    # grace period those cannot use, the second ends it. Nothing counted may be lost.
    fast = Run(tmp_path, *cli_args(storage_url, 150, "fast", 2, "--no-progress"))
    assert fast.finish() == 0, fast.err[-3000:]
    run = Run(tmp_path, *cli_args(storage_url, 300, "endless", 2, "--grace", "600"))
    run.wait_for(lambda err: "busy=2/2" in err, "both workers busy")
    run.proc.send_signal(signal.SIGINT)
    run.wait_for(lambda err: "SIGINT: no new trials" in err, "the first Ctrl-C's message")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.err[-3000:]
    held = states(storage_url)
    assert held[TrialState.COMPLETE] == 150 and held[TrialState.RUNNING] == 0
    assert held[TrialState.FAIL] == 2  # the two endless trials, closed by the second Ctrl-C
    failed = [t for t in load(storage_url).trials if t.state == TrialState.FAIL]
    assert all("interrupted by SIGINT" in t.system_attrs[attrs.FAIL_REASON] for t in failed)
    assert "holds 150 finished trials" in run.err


def test_a_callback_sees_its_trial_in_the_storage_already(tmp_path):
    """Callbacks are called only once the durable storage holds the trial they are given."""
    import tunefleet
    from tunefleet._studies import open_storage

    url = f"sqlite:///{tmp_path / 'cb.db'}"
    study = optuna.create_study(study_name="tunefleet", storage=open_storage(url, sqlite_wal=True),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    reader = open_storage(url)
    missing: list[int] = []
    seen: list[int] = []

    def callback(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seen.append(trial.number)
        durable = optuna.load_study(study_name="tunefleet", storage=reader)
        stored = [t for t in durable.get_trials(deepcopy=False) if t.number == trial.number]
        if not stored or stored[0].state != trial.state or stored[0].values != trial.values:
            missing.append(trial.number)

    tunefleet.optimize(study, _quick, n_trials=40, n_workers=2, callbacks=[callback])
    assert sorted(seen) == list(range(40))
    assert missing == []


def _quick(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1, 1) ** 2


@pytest.mark.parametrize("storage_url", ["sqlite", "journal", "postgresql", "mariadb"],
                         indirect=True)
def test_the_hub_writes_the_study_study_optimize_writes(tmp_path, storage_url):
    """Group commit produces an ordinary Optuna study: the same seeded run through
    ``study.optimize`` and through the hub (one worker, so the order is the same) leaves the
    same numbers, states, params, distributions, values, reports and attributes."""
    import tunefleet
    from tunefleet._studies import open_storage

    from tests.hub.durable_objectives import rich  # importable by spawned workers too

    def run(url: str, name: str, hub: bool) -> list[optuna.trial.FrozenTrial]:
        study = optuna.create_study(study_name=name, storage=open_storage(url),
                                    sampler=optuna.samplers.RandomSampler(seed=3))
        if hub:
            tunefleet.optimize(study, rich, n_trials=40, n_workers=1, catch=(ValueError,))
        else:
            study.optimize(rich, n_trials=40, catch=(ValueError,))
        return optuna.load_study(study_name=name, storage=open_storage(url)).trials

    plain = run(storage_url, "plain", hub=False)
    hub = run(storage_url, "hub", hub=True)

    def fields(t: optuna.trial.FrozenTrial) -> dict:
        return {"number": t.number, "state": t.state, "params": t.params,
                "distributions": t.distributions, "values": t.values,
                "intermediate_values": t.intermediate_values, "user_attrs": t.user_attrs,
                "system_attrs": {k: v for k, v in t.system_attrs.items()
                                 if not k.startswith("tunefleet:")}}

    assert {t.state for t in plain} == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    assert [fields(t) for t in hub] == [fields(t) for t in plain]
    for t in hub:
        assert t.datetime_start is not None and t.datetime_complete is not None
        assert t.datetime_start <= t.datetime_complete
        assert t.system_attrs[attrs.WORKER]


class _BrokenSampler(optuna.samplers.RandomSampler):
    """Fails from trial 3 on, whether asked at hand-out (presampling) or by a suggest call."""

    def sample_independent(self, study, trial, name, dist):
        if trial.number >= 3:
            raise RuntimeError("sampler broke")
        return super().sample_independent(study, trial, name, dist)


def test_a_sampler_that_raises_leaves_no_trial_running(tmp_path):
    import tunefleet
    from tunefleet._studies import open_storage

    url = f"sqlite:///{tmp_path / 'broken.db'}"
    study = optuna.create_study(study_name="tunefleet", storage=open_storage(url),
                                sampler=_BrokenSampler(seed=0))
    with pytest.raises(RuntimeError, match="sampler broke"):
        tunefleet.optimize(study, _quick, n_trials=20, n_workers=2)
    held = states(url)
    # Trials 0-2 completed, or were closed as FAIL if still running when trial 3 broke.
    assert held[TrialState.COMPLETE] + held[TrialState.FAIL] == sum(held.values())
    assert held[TrialState.COMPLETE] <= 3 and held[TrialState.FAIL] >= 1
