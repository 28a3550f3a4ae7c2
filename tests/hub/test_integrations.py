"""Optuna's integrations inside hub workers: each needs ``trial.study``, ``trial.storage`` or
the pruner to behave as in ``study.optimize``. Data sets are scikit-learn's bundled ones; the
pruner is a ``ThresholdPruner`` that prunes at the first report, so that a pruned trial proves
the callback's report and ``should_prune`` went through the coordinator."""

from __future__ import annotations

import json
import math

import optuna
import pytest

import tunefleet

pytestmark = pytest.mark.slow


def _always_prune() -> optuna.pruners.BasePruner:
    return optuna.pruners.ThresholdPruner(upper=-1.0)  # every loss is above it


def _breast_cancer() -> tuple:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    return train_test_split(x, y, test_size=0.25, random_state=0)


# -- optuna.artifacts, optuna.terminator: trial.storage --------------------------------------

def test_upload_artifact_from_a_worker_with_a_file_system_store(tmp_path):
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    store = FileSystemArtifactStore(str(store_dir))

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        path = tmp_path / f"model-{trial.number}.txt"
        path.write_text(f"trial {trial.number} x={x}")
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        return x

    study = optuna.create_study()
    tunefleet.optimize(study, objective, n_trials=4, n_workers=2)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    for t in study.trials:
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert len(metas) == 1 and metas[0].filename == f"model-{t.number}.txt"
        out = tmp_path / f"back-{t.number}.txt"
        download_artifact(artifact_store=store, artifact_id=metas[0].artifact_id,
                          file_path=str(out))
        assert out.read_text() == f"trial {t.number} x={t.params['x']}"


def test_terminator_cross_validation_scores_from_a_worker():
    from optuna.terminator import report_cross_validation_scores
    from optuna.terminator.erroreval import _CROSS_VALIDATION_SCORES_KEY

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        report_cross_validation_scores(trial, [x, x / 2, x / 3])
        return x

    study = optuna.create_study()
    tunefleet.optimize(study, objective, n_trials=3, n_workers=2)
    for t in study.trials:
        x = t.params["x"]
        assert t.system_attrs[_CROSS_VALIDATION_SCORES_KEY] == [x, x / 2, x / 3]


# -- trial.study and set_user_attr -------------------------------------------------------------

def test_trial_study_is_an_optuna_study_read_and_written_through_the_coordinator():
    def objective(trial):
        x = trial.suggest_int("x", 0, 100)
        study = trial.study
        out = {"isinstance": isinstance(study, optuna.Study), "name": study.study_name,
               "n_seen": len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))),
               "direction": study.direction.name}
        try:
            study.optimize(lambda t: 0.0, n_trials=1)
        except RuntimeError as exc:
            out["nested"] = str(exc)
        try:
            trial.set_user_attr("bad", {1, 2})  # a set is not JSON
        except TypeError as exc:
            out["not_json"] = type(exc).__name__
        if trial.number == 0:
            study.set_user_attr("from_worker", trial.number)
            study.enqueue_trial({"x": 42})
        for key, value in out.items():
            trial.set_user_attr(key, value)
        return float(x)

    study = optuna.create_study(study_name="probe", direction="maximize")
    study.enqueue_trial({"x": 7})
    tunefleet.optimize(study, objective, n_trials=5, n_workers=1)
    first = study.trials[0].user_attrs
    assert first["isinstance"] is True and first["name"] == "probe"
    assert first["direction"] == "MAXIMIZE"
    assert first["nested"] == "Nested invocation of `Study.optimize` method isn't allowed."
    assert first["not_json"] == "TypeError" and "bad" not in first
    assert study.user_attrs["from_worker"] == 0
    assert 42 in [t.params["x"] for t in study.trials]  # the trial the worker enqueued ran
    # One worker: each trial sees every trial before it as COMPLETE.
    assert [t.user_attrs["n_seen"] for t in study.trials] == [0, 1, 2, 3, 4]


def test_trial_storage_reads_everything_and_writes_only_attributes():
    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        storage = trial.storage
        assert isinstance(storage, optuna.storages.BaseStorage)
        study_id = trial.study._study_id
        own = storage.get_trial(trial._trial_id)  # the parameter travelled with the call
        trial.set_user_attr("own_x", own.params["x"])
        trial.set_user_attr("n_trials", storage.get_n_trials(study_id))
        storage.set_trial_system_attr(trial._trial_id, "written_by", "worker")
        try:
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE)
        except NotImplementedError as exc:
            trial.set_user_attr("refused", "coordinator alone" in str(exc))
        return x

    study = optuna.create_study()
    tunefleet.optimize(study, objective, n_trials=3, n_workers=1)
    for t in study.trials:
        assert t.user_attrs["own_x"] == t.params["x"]
        assert t.user_attrs["n_trials"] == t.number + 1
        assert t.system_attrs["written_by"] == "worker"
        assert t.user_attrs["refused"] is True
        assert t.state.name == "COMPLETE"


def test_trial_study_stop_from_a_worker_ends_the_run():
    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 2:
            trial.study.stop()
        return x

    study = optuna.create_study()
    tunefleet.optimize(study, objective, n_trials=50, n_workers=1)
    assert len(study.trials) == 3


# -- LightGBM ----------------------------------------------------------------------------------

def test_lightgbm_pruning_callback_in_a_worker():
    lgb = pytest.importorskip("lightgbm")
    from optuna_integration import LightGBMPruningCallback

    x_train, x_valid, y_train, y_valid = _breast_cancer()

    def objective(trial):
        params = {"objective": "binary", "metric": "binary_logloss", "verbosity": -1,
                  "num_leaves": trial.suggest_int("num_leaves", 4, 16)}
        dtrain = lgb.Dataset(x_train, label=y_train)
        dvalid = lgb.Dataset(x_valid, label=y_valid)
        booster = lgb.train(params, dtrain, num_boost_round=20, valid_sets=[dvalid],
                            callbacks=[LightGBMPruningCallback(trial, "binary_logloss")])
        return float(booster.best_score["valid_0"]["binary_logloss"])

    study = optuna.create_study(pruner=_always_prune())
    tunefleet.optimize(study, objective, n_trials=3, n_workers=2)
    assert [t.state.name for t in study.trials] == ["PRUNED"] * 3
    assert all(list(t.intermediate_values) == [0] for t in study.trials)


def test_lightgbm_tuner_runs_its_trials_in_workers(tmp_path, monkeypatch):
    """LightGBMTuner calls ``study.optimize`` itself; routed through tunefleet (as the Optuna
    suite's plugin does), its objective writes its step and parameters through
    ``trial.storage`` from the workers, and saves boosters that the tuner loads back."""
    lgb = pytest.importorskip("lightgbm")
    from optuna_integration.lightgbm import LightGBMTuner

    def routed(self, func, n_trials=None, timeout=None, n_jobs=1, catch=(), callbacks=None,
               gc_after_trial=False, show_progress_bar=False):
        tunefleet.optimize(self, func, n_trials, n_workers=2, timeout=timeout, catch=catch,
                           callbacks=callbacks)

    monkeypatch.setattr(optuna.study.Study, "optimize", routed)
    x_train, x_valid, y_train, y_valid = _breast_cancer()
    params = {"objective": "binary", "metric": "binary_logloss", "verbosity": -1}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    tuner = LightGBMTuner(params, lgb.Dataset(x_train, label=y_train), num_boost_round=5,
                          valid_sets=[lgb.Dataset(x_valid, label=y_valid)], study=study,
                          model_dir=str(tmp_path), optuna_seed=0, show_progress_bar=False)
    tuner.tune_feature_fraction(n_trials=2)
    tuner.tune_num_leaves(n_trials=2)
    steps = [t.system_attrs.get("lightgbm_tuner:step_name") for t in study.trials]
    assert steps == ["feature_fraction"] * 2 + ["num_leaves"] * 2
    assert all("feature_fraction" in json.loads(t.system_attrs["lightgbm_tuner:lgbm_params"])
               for t in study.trials)
    assert math.isfinite(tuner.best_score) and "num_leaves" in tuner.best_params
    assert isinstance(tuner.get_best_booster(), lgb.Booster)  # saved by a worker


# -- XGBoost -----------------------------------------------------------------------------------

def test_xgboost_pruning_callback_in_a_worker():
    xgb = pytest.importorskip("xgboost")
    from optuna_integration import XGBoostPruningCallback

    x_train, x_valid, y_train, y_valid = _breast_cancer()

    def objective(trial):
        dtrain = xgb.DMatrix(x_train, label=y_train)
        dvalid = xgb.DMatrix(x_valid, label=y_valid)
        params = {"objective": "binary:logistic", "eval_metric": "logloss",
                  "max_depth": trial.suggest_int("max_depth", 2, 6), "nthread": 1}
        booster = xgb.train(params, dtrain, num_boost_round=10, evals=[(dvalid, "validation")],
                            callbacks=[XGBoostPruningCallback(trial, "validation-logloss")],
                            verbose_eval=False)
        return float(booster.eval(dvalid).split(":")[1])

    study = optuna.create_study(pruner=_always_prune())
    tunefleet.optimize(study, objective, n_trials=3, n_workers=2)
    assert [t.state.name for t in study.trials] == ["PRUNED"] * 3
    assert all(list(t.intermediate_values) == [0] for t in study.trials)


# -- PyTorch Lightning -------------------------------------------------------------------------

def _lightning_objective(trial):
    import lightning.pytorch as pl
    import torch
    from optuna_integration import PyTorchLightningPruningCallback
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(x[:256] / 16, dtype=torch.float32),
                                          torch.tensor(y[:256]))
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    hidden = trial.suggest_int("hidden", 8, 32)

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 10))

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, _):
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("val_loss", loss)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False,
                         callbacks=[PyTorchLightningPruningCallback(trial, monitor="val_loss")])
    trainer.fit(Net(), loader, loader)
    return float(trainer.callback_metrics["val_loss"])


def test_pytorch_lightning_pruning_callback_in_a_worker():
    pytest.importorskip("lightning")
    study = optuna.create_study(pruner=_always_prune())
    tunefleet.optimize(study, _lightning_objective, n_trials=2, n_workers=2)
    assert [t.state.name for t in study.trials] == ["PRUNED"] * 2
    assert all(list(t.intermediate_values) == [0] for t in study.trials)


# -- MLflow ------------------------------------------------------------------------------------

def test_mlflow_callback_and_track_in_mlflow_from_workers(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from optuna_integration.mlflow import MLflowCallback

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.tracking.MlflowClient(uri)
    client.search_experiments()  # creates the schema once, before two workers race to do it
    # and the experiment: mlflow.set_experiment in two processes at once lets the one whose
    # create_experiment loses the race return without making it the active experiment, so that
    # worker's run lands in the default experiment (MLflow's race, not tunefleet's)
    client.create_experiment("mlflow-probe")
    mlflc = MLflowCallback(tracking_uri=uri, metric_name="loss")

    @mlflc.track_in_mlflow()  # its wrapper holds the callback's lock: a new one per worker
    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        mlflow.log_metric("from_worker", trial.number)
        return x * x

    study = optuna.create_study(study_name="mlflow-probe")
    tunefleet.optimize(study, objective, n_trials=3, n_workers=2, callbacks=[mlflc])
    experiment = client.get_experiment_by_name("mlflow-probe")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    by_number = {int(r.data.metrics["from_worker"]): r for r in runs}
    assert sorted(by_number) == [0, 1, 2]  # logged in the worker...
    for t in study.trials:  # ...into the run the coordinator's callback completed
        run = by_number[t.number]
        assert run.data.metrics["loss"] == pytest.approx(t.value)
        assert float(run.data.params["x"]) == pytest.approx(t.params["x"])
