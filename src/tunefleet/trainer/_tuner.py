"""The tuner: the user says how to build a trainer from parameters and which parameters to try;
the tuner runs the trials on tunefleet workers (hub mode), each training with a trial hook,
a log folder of its own and tracker runs opened in the worker."""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

import optuna

from tunefleet.errors import UsageError
from tunefleet._gpus import check_packing, pack
from tunefleet._studies import DEFAULT_STORAGE, StudySpec, create_or_load_study
from tunefleet.tracking._base import Tracker, trial_run, warn

REPEAT_PARAM = "fixed_repeat"  # the repeat number of a fixed trial, a parameter of the trial
SEED_ATTR = "seed"  # user attribute: the seed the trial trained with
FIXED_SEED_BASE = 42
_MINIMIZED = ("loss", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "time", "cost")


#: the seed tuner's argument -> tunefleet's (docs/trainer.md, "Coming from the seed tuner")
RENAMED = {"proj_name": "study_name=", "n_search_trials": "n_trials=",
           "n_jobs": "n_workers=", "n_gpus": "gpus= (a count or GPU ids)",
           "do_init_wandb": "trackers=[WandbTracker()]",
           "exp_purpose": "WandbTracker(notes=...)", "trial_name": "no argument (trials are "
           "named STUDY_trialN)"}


def _refuse_renamed(given: Mapping[str, Any]) -> None:
    """A seed tuner's argument is one line naming tunefleet's; refused rather than accepted
    as an alias so that each setting has one name (n_jobs and n_workers would both exist)."""
    known = [f"{old}= is {RENAMED[old]}" for old in given if old in RENAMED]
    if known:
        raise UsageError(f"Tuner takes tunefleet's names: {', '.join(known)} (the table in "
                         "docs/trainer.md maps every seed argument)")
    if given:
        raise TypeError(f"Tuner() got an unexpected keyword argument {next(iter(given))!r}")


def direction_for(metric: str) -> str:
    """Losses and errors are minimized, anything else (accuracy, F1, AUC) maximized."""
    name = metric.lower()
    return "minimize" if any(word in name for word in _MINIMIZED) else "maximize"


class Tuner:
    """Subclass it and implement:

    - ``load_items(**params)``: build and return a ``Trainer`` from the tuned parameters and
      the fixed config (both passed as keyword arguments);
    - ``get_suggested_params(trial)``: a dict of ``trial.suggest_*`` values;
    - ``get_other_cfg()``: a dict of fixed settings (also logged to trackers).

    ``run(trial_param_list)`` enqueues the given parameter sets first, then searches for
    ``n_trials`` trials in all. With ``do_fixed_trial=True`` it instead runs each given set
    ``n_fixed_trials`` times, repeat ``r`` seeded with ``seed + r`` (42 + r by default), with
    pruning off, and prints the mean and spread of each set.

    ``checkpoint_every=N`` saves each trial's training every N epochs (``CheckpointHook``): a
    trial whose worker dies continues from its last checkpoint instead of from epoch 0.
    """

    def __init__(self, study_name: str = "tunefleet", metric: str = "valid_acc", *,
                 direction: str | None = None, n_trials: int = 10, report_last_n: int = 1,
                 do_fixed_trial: bool = False, n_fixed_trials: int = 1,
                 storage: str | None = None, n_workers: int | None = None,
                 gpus: int | Sequence[int | str] | None = None, trials_per_gpu: int | None = None,
                 gpus_per_trial: int | None = None, client: Any = None,
                 allow_prune: bool = True, sampler: str | optuna.samplers.BaseSampler | None = None,
                 pruner: str | optuna.pruners.BasePruner | None = None, seed: int | None = 42,
                 trackers: Sequence[Tracker] = (), timeout: float | None = None,
                 max_retries: int = 1, threads_per_worker: int | None = None,
                 start_method: str | None = None, checkpoint_every: int | None = None,
                 verbose: bool = True, **renamed: Any) -> None:
        _refuse_renamed(renamed)
        if n_fixed_trials < 1:
            raise UsageError(f"n_fixed_trials must be at least 1, not {n_fixed_trials}")
        if n_trials < 0:
            raise UsageError(f"n_trials must not be negative, not {n_trials}")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise UsageError(f"checkpoint_every must be at least 1 epoch (or None: no "
                             f"checkpoints), not {checkpoint_every}")
        if (threads_per_worker or 1) > 1 and client is None and start_method == "fork":
            raise UsageError("threads_per_worker > 1 needs start_method='forkserver' or "
                             "'spawn': a worker forked from a process that ran torch hangs in "
                             "its second CPU thread")
        self.study_name = study_name
        self.metric = metric
        self.direction = (direction or direction_for(metric)).lower()
        self.n_trials = n_trials
        self.report_last_n = report_last_n
        self.do_fixed_trial = do_fixed_trial
        self.n_fixed_trials = n_fixed_trials
        self.storage = storage
        self.n_workers = n_workers
        self.gpus = gpus if gpus is None or isinstance(gpus, int) else list(gpus)
        check_packing(trials_per_gpu, gpus_per_trial)
        self.trials_per_gpu = trials_per_gpu
        self.gpus_per_trial = gpus_per_trial
        self.client = client
        self.allow_prune = allow_prune and not do_fixed_trial
        self.sampler = sampler
        self.pruner = pruner
        self.seed = seed
        self.trackers = list(trackers)
        self.timeout = timeout
        self.max_retries = max_retries
        self.threads_per_worker = threads_per_worker
        self.start_method = start_method
        self.checkpoint_every = checkpoint_every
        self.verbose = verbose
        self.study: optuna.Study | None = None

    # -- what the user writes ------------------------------------------------------------------
    def load_items(self, **params: Any) -> Any:
        raise NotImplementedError("implement load_items(**params) and return a Trainer")

    def get_suggested_params(self, trial: optuna.Trial) -> dict[str, Any]:
        raise NotImplementedError("implement get_suggested_params(trial)")

    def get_other_cfg(self) -> dict[str, Any]:
        return {}

    # -- running -------------------------------------------------------------------------------
    def create_study(self) -> optuna.Study:
        """Create or load the study: direction from the metric, pruning off for fixed trials."""
        pruner_name = self.pruner if isinstance(self.pruner, str) else None
        if not self.allow_prune:
            pruner_name = "none"
        spec = StudySpec(directions=[self.direction],
                         sampler=self.sampler if isinstance(self.sampler, str) else None,
                         seed=self.seed, pruner=pruner_name)
        study = create_or_load_study(self.storage or DEFAULT_STORAGE, self.study_name, spec)
        if isinstance(self.sampler, optuna.samplers.BaseSampler):
            study.sampler = self.sampler
        if self.allow_prune and isinstance(self.pruner, optuna.pruners.BasePruner):
            study.pruner = self.pruner
        return study

    def run(self, trial_param_list: Sequence[Mapping[str, Any]] | None = None) -> optuna.Study:
        """Enqueue ``trial_param_list`` and run the trials on tunefleet workers; returns the study."""
        import tunefleet

        given = [dict(p) for p in trial_param_list or []]
        if self.do_fixed_trial and not given:
            raise UsageError("do_fixed_trial=True needs the parameter sets to repeat: "
                             "pass them as run(trial_param_list=[{...}, ...])")
        study = self.create_study()
        self.study = study
        if self.do_fixed_trial:
            for params in given:
                for repeat in range(self.n_fixed_trials):
                    study.enqueue_trial({**params, REPEAT_PARAM: repeat})
            n_trials = len(given) * self.n_fixed_trials
        else:
            for params in given:
                study.enqueue_trial(params)
            n_trials = max(self.n_trials, len(given))
        for tracker in self.trackers:
            try:
                tracker.prepare(study.study_name)
            except Exception as exc:
                warn(tracker.name, "preparing the study", exc)
        gpus, per_gpu, per_trial = self.gpus, self.trials_per_gpu, self.gpus_per_trial
        backend: dict[str, Any] = {"trials_per_gpu": per_gpu, "gpus_per_trial": per_trial}
        if self.client is not None:
            backend.update(backend="dask", client=self.client)
            if gpus is not None or per_gpu or per_trial:
                # Dask workers own their GPUs: each worker task asks for its share of them
                # (one GPU by default) and sees the GPUs of its slot.
                backend["trials_per_gpu"] = per_gpu if per_gpu or per_trial else 1
                backend["n_workers"] = self.n_workers or self._gpu_slots()
                gpus = None
        else:
            # The backend shares the CPUs out and, from that, picks how workers start: forked
            # from this process when each runs one thread, else from the fork server.
            backend.update(start_method=self.start_method, threads_per_worker=(
                1 if self.threads_per_worker is None and self.start_method == "fork"
                else self.threads_per_worker))
        try:
            backend.setdefault("n_workers", self.n_workers)
            tunefleet.optimize(study, self.objective, n_trials=n_trials, gpus=gpus,
                               timeout=self.timeout, max_retries=self.max_retries, **backend)
        finally:
            for tracker in self.trackers:
                try:
                    tracker.end_study(study)
                except Exception as exc:
                    warn(tracker.name, "closing the study", exc)
        if self.verbose:
            print(self.summary_text(study))
        return study

    def objective(self, trial: optuna.Trial) -> float:
        """One trial, in the worker: seed, build the trainer, train with the trial hook (and the
        checkpoint hook, which restores a continued trial's training before its first epoch)."""
        from tunefleet.trainer._checkpoint_hook import CheckpointHook
        from tunefleet.trainer._hooks import TrackingHook
        from tunefleet.trainer._seeding import seed_everything
        from tunefleet.trainer._trial_hook import TrialHook

        params = dict(self.get_suggested_params(trial))
        seed = self.seed
        if self.do_fixed_trial:
            repeat = trial.suggest_int(REPEAT_PARAM, 0, self.n_fixed_trials - 1)
            seed = (FIXED_SEED_BASE if self.seed is None else self.seed) + repeat
        if seed is not None:
            seed_everything(seed)
            trial.set_user_attr(SEED_ATTR, seed)
        config = {**self.get_other_cfg(), **params}
        with trial_run(trial, self.trackers, self.study_name, config) as run:
            trainer = self.load_items(**config)
            if trainer.log_hook is not None and trainer.log_hook.tag is None:
                trainer.log_hook.tag = f"{self.study_name}_trial{trial.number}"
            hook = TrialHook(trial, self.metric, self.report_last_n, self.allow_prune)
            hooks: list[Any] = [hook, TrackingHook()] if self.trackers else [hook]
            if self.checkpoint_every:
                hooks.append(CheckpointHook(trial, self.checkpoint_every))
            trainer.register_hooks(hooks)
            trainer.run()
            run.value = hook.final_value()
        return run.value

    def _gpu_slots(self) -> int | None:
        """How many workers ``gpus`` makes room for once packed (``tunefleet._gpus.pack``);
        None without ``gpus``."""
        if self.gpus is None:
            return None
        count = self.gpus if isinstance(self.gpus, int) else len(self.gpus)
        return len(pack([str(i) for i in range(count)], self.trials_per_gpu,
                        self.gpus_per_trial))

    def __getstate__(self) -> dict[str, Any]:
        # The tuner travels to the workers with its objective; the study stays with its owner.
        state = self.__dict__.copy()
        state["study"] = None
        state["client"] = None  # a Dask client does not travel; workers need no client
        return state

    # -- results -------------------------------------------------------------------------------
    def summary(self, study: optuna.Study | None = None) -> list[dict[str, Any]]:
        """Per parameter set (fixed repeats grouped together): completed runs, their values and
        seeds, mean and standard deviation; in order of first appearance."""
        study = study or self.study
        if study is None:
            raise UsageError("no study yet: call run() first")
        groups: dict[tuple, dict[str, Any]] = {}
        for t in study.get_trials(deepcopy=False):
            params = {k: v for k, v in t.params.items() if k != REPEAT_PARAM}
            key = tuple(sorted((k, repr(v)) for k, v in params.items()))
            row = groups.setdefault(key, {"params": params, "values": [], "seeds": [],
                                          "states": []})
            row["states"].append(t.state.name)
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
                row["values"].append(t.value)
                row["seeds"].append(t.user_attrs.get(SEED_ATTR))
        for row in groups.values():
            vals = row["values"]
            row["n"] = len(vals)
            row["mean"] = statistics.fmean(vals) if vals else math.nan
            row["std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else math.nan
        return list(groups.values())

    def summary_text(self, study: optuna.Study | None = None) -> str:
        study = study or self.study
        assert study is not None
        states: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        lines = [f"study {study.study_name}: {len(study.trials)} trials ("
                 + ", ".join(f"{n} {s.lower()}" for s, n in states.items()) + ")"]
        if self.do_fixed_trial:
            lines.append(f"{self.metric} per parameter set (mean ± std over repeats):")
            for row in self.summary(study):
                lines.append(f"  {row['mean']:.6g} ± {row['std']:.3g}  (n={row['n']}, "
                             f"seeds {row['seeds']})  {row['params']}")
        else:
            try:
                best = study.best_trial
                lines.append(f"best {self.metric} {best.value:.6g} (trial {best.number}) "
                             f"params {best.params}")
            except ValueError:
                lines.append("no trial completed")
        return "\n".join(lines)
