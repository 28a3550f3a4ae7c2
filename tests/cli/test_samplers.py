"""Every ``--sampler`` choice of the CLI: it runs after the install of its extra, or says in
one line which extra to install before the study is touched; ``grid`` and ``bruteforce``."""

from __future__ import annotations

import itertools
import json

import optuna
import pytest
from optuna.trial import TrialState

from tests.cli.conftest import OBJECTIVES
from tunefleet._studies import SAMPLERS, SPEC_ATTR


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tunefleet", storage=url).get_trials()


def _spec(url: str) -> dict:
    """The study spec tunefleet recorded in the study (storage API: Optuna 5 dropped
    ``Study.system_attrs``)."""
    store = optuna.storages.get_storage(url)
    attrs = store.get_study_system_attrs(store.get_study_id_from_name("tunefleet"))
    return json.loads(attrs[SPEC_ATTR])


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "grid"])
def test_every_sampler_runs_from_the_command_line(sampler, cli, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    target = f"{OBJECTIVES}:{'discrete' if sampler == 'bruteforce' else 'mixed'}"
    r = cli("run", target, "--n-trials", "4", "--workers", "2", "--sampler", sampler,
            "--seed", "3", "--storage", url, "--no-progress", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "ExperimentalWarning" not in r.stderr, r.stderr
    trials = _trials(url)
    assert len(trials) >= 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert _spec(url)["sampler"] == sampler
    assert json.loads(r.stdout)["n_trials"] == len(trials)


@pytest.mark.parametrize("sampler,hidden,extra", [
    ("cmaes", ["cmaes"], "cmaes"),
    ("gp", ["torch"], "gp"),
    ("qmc", ["scipy"], "qmc"),
])
def test_missing_extra_is_one_line_before_the_study_exists(sampler, hidden, extra, cli,
                                                           without, tmp_path):
    db = tmp_path / "s.db"
    for command in (("run", f"{OBJECTIVES}:mixed", "--n-trials", "3"),
                    ("init",), ("serve", f"{OBJECTIVES}:mixed", "--n-trials", "3")):
        r = cli(*command, "--sampler", sampler, "--storage", f"sqlite:///{db}",
                cwd=tmp_path, env=without(*hidden))
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr.strip().count("\n") == 0, r.stderr
        assert f"pip install 'tunefleet[{extra}]'" in r.stderr and hidden[0] in r.stderr
        assert not db.exists()  # no study, no trial: nothing was written


def test_plain_samplers_need_no_extra(cli, without, tmp_path):
    """tpe, random, nsga2, grid and bruteforce run with none of the optional modules."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("run", f"{OBJECTIVES}:mixed", "--n-trials", "3", "--workers", "1",
            "--sampler", "tpe", "--storage", url, "--no-progress", cwd=tmp_path,
            env=without("cmaes", "torch", "scipy", "sklearn"))
    assert r.returncode == 0, r.stderr
    assert len(_trials(url)) == 3


GRID = {"x": [-1, 0, 1], "opt": ["adam", "sgd"]}


def test_grid_sampler_runs_the_grid_of_a_yaml_file_once(cli, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("x: [-1, 0, 1]\nopt: [adam, sgd]\n")
    url = f"sqlite:///{tmp_path / 'g.db'}"
    r = cli("run", f"{OBJECTIVES}:discrete", "--n-trials", "20", "--workers", "1",
            "--sampler", "grid", "--search-space", str(space), "--storage", url,
            "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seen = [(t.params["x"], t.params["opt"]) for t in _trials(url)]
    # one worker: every point once, then the study stops although 20 trials were asked for
    assert sorted(seen) == sorted(itertools.product(GRID["x"], GRID["opt"]))
    assert _spec(url)["search_space"] == GRID  # workers that join later build the same grid


def _init_grid(cli, tmp_path) -> str:
    """``tunefleet init`` of a grid study (from a JSON file); its storage URL."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps(GRID))
    url = f"sqlite:///{tmp_path / 'g.db'}"
    r = cli("init", "--sampler", "grid", "--search-space", str(space), "--storage", url,
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return url


def test_grid_from_json_with_storage_workers(cli, tmp_path):
    """Storage mode: ``init`` records the grid, workers started without it follow it."""
    url = _init_grid(cli, tmp_path)
    r = cli("worker", f"{OBJECTIVES}:discrete", "--storage", url, "--n-trials", "6",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seen = {(t.params["x"], t.params["opt"]) for t in _trials(url)}
    assert seen == set(itertools.product(GRID["x"], GRID["opt"]))


def test_seed_alone_keeps_the_recorded_grid(cli, tmp_path):
    """A worker given only ``--seed`` on a grid study follows the grid (it used to build TPE,
    which knows no grid, and draw outside it)."""
    url = _init_grid(cli, tmp_path)
    r = cli("worker", f"{OBJECTIVES}:discrete", "--storage", url, "--n-trials", "6",
            "--seed", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seen = [(t.params["x"], t.params["opt"]) for t in _trials(url)]
    assert sorted(seen) == sorted(itertools.product(GRID["x"], GRID["opt"]))


def test_bruteforce_enumerates_a_finite_space(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    r = cli("run", f"{OBJECTIVES}:discrete", "--n-trials", "20", "--workers", "1",
            "--sampler", "bruteforce", "--storage", url, "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seen = [(t.params["x"], t.params["opt"]) for t in _trials(url)]
    assert sorted(seen) == sorted(itertools.product(GRID["x"], GRID["opt"]))


@pytest.mark.parametrize("args,words", [
    (("--sampler", "grid"), "--search-space FILE"),
    (("--search-space", "{space}"), "add --sampler grid"),
    (("--sampler", "grid", "--search-space", "{missing}"), "No such file"),
    (("--sampler", "grid", "--search-space", "{bad}"), "non-empty list of values"),
])
def test_grid_mistakes_are_one_line(args, words, cli, tmp_path):
    (tmp_path / "space.json").write_text(json.dumps(GRID))
    (tmp_path / "bad.json").write_text(json.dumps({"x": 3}))
    paths = {"space": "space.json", "missing": "nope.json", "bad": "bad.json"}
    args = tuple(a.format(**paths) for a in args)
    r = cli("run", f"{OBJECTIVES}:discrete", "--n-trials", "2", *args, "--storage",
            "sqlite:///g.db", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert words in r.stderr, r.stderr
    assert not (tmp_path / "g.db").exists()
