"""The tuner with checkpoints on real worker processes: the worker of trial 0 is SIGKILLed at
the end of an epoch; its retry continues at the epoch after the last checkpoint, with its metric
history, reports, log and plots whole. Without checkpoints the retry starts again at epoch 0."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.trainer.test_checkpoint_state import valid_iters
from tests.trainer.toy import ToyTrainer, ToyTuner
from tunefleet import UsageError
from tunefleet.trainer import HookBase

pytestmark = pytest.mark.timeout(240)
EPOCHS, ITERS = 4, 6  # 192 samples in batches of 32
KILL_AT = 2  # the end of epoch 2: after the save of epoch 1 (every=2 saves epochs 1 and 3)


class Record(HookBase):
    """Writes each epoch a trial runs to ``epochs.txt``, and its history at the end."""

    def __init__(self, trial: Any, folder: str) -> None:
        self.number = trial.number
        self.folder = Path(folder)

    def before_epoch(self) -> None:
        with open(self.folder / "epochs.txt", "a") as f:
            f.write(f"{self.number} {self.trainer.current_epoch}\n")

    def after_train(self) -> None:
        steps = {n: [s for s, _ in pts] for n, pts in self.trainer.history.series.items()}
        (self.folder / f"history{self.number}.json").write_text(json.dumps(steps))


class KillFirstTrial(HookBase):
    """The worker of trial 0 dies at the end of epoch ``KILL_AT``, after the checkpoint hook."""

    priority = 99

    def __init__(self, trial: Any) -> None:
        self.number = trial.number

    def after_epoch(self) -> None:
        if self.number == 0 and self.trainer.current_epoch == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


class KilledTuner(ToyTuner):
    def __init__(self, *args: Any, record: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record

    def get_other_cfg(self) -> dict[str, Any]:
        return {"max_epoch": EPOCHS, "valid_freq": 3}

    def load_items(self, **params: Any) -> ToyTrainer:
        trainer = super().load_items(**params)
        trainer.register_hooks([Record(self._trial, self.record), KillFirstTrial(self._trial)])
        return trainer


def _epochs(folder: Path) -> dict[int, list[int]]:
    runs: dict[int, list[int]] = {}
    for line in (folder / "epochs.txt").read_text().splitlines():
        number, epoch = map(int, line.split())
        runs.setdefault(number, []).append(epoch)
    return runs


@pytest.mark.parametrize("every", [2, None], ids=["checkpoints", "none"])
def test_a_killed_trial_resumes_at_its_saved_epoch_with_history_and_plots_whole(tmp_path, every):
    runs = tmp_path / "runs"
    tuner = KilledTuner("ckpt", "valid_acc", n_trials=1, n_workers=1, max_retries=1,
                        storage=f"sqlite:///{tmp_path / 'study.db'}", checkpoint_every=every,
                        out_dir=str(runs), record=str(tmp_path), verbose=False,
                        start_method="fork")  # spawn works the same, ~10 s slower a worker
    tuner.run(trial_param_list=[{"lr": 0.3, "hidden": 8}])
    study = optuna.load_study(study_name="ckpt", storage=f"sqlite:///{tmp_path / 'study.db'}")

    lost, retry = study.trials
    assert lost.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0
    epochs = _epochs(tmp_path)
    assert epochs[0] == [0, 1, 2]
    start = 2 if every else 0  # the epoch after the save of epoch 1, or all over again
    assert epochs[retry.number] == list(range(start, EPOCHS))

    history = json.loads((tmp_path / f"history{retry.number}.json").read_text())
    valid_steps = list(range(2, EPOCHS * ITERS, 3))
    assert history["train_loss"] == list(range(EPOCHS * ITERS)), "every iteration once"
    assert history["valid_acc"] == valid_steps
    assert sorted(retry.intermediate_values) == valid_steps
    assert retry.value > 0.9

    folder = next(runs.glob(f"*_ckpt_trial{retry.number}"))
    assert {"train_metrics.png", "valid_metrics.png"} <= {p.name for p in folder.iterdir()}
    log = (folder / "log.txt").read_text()
    assert log.count("start: model Sequential") == 1
    assert valid_iters(log) == valid_steps, "every validation once"
    assert "end: completed after 24 iterations" in log
    resumed = "resumed at epoch 2 (iteration 12) from the checkpoint taken at the end of epoch 1"
    assert (resumed in log) == bool(every)
    assert not list(tmp_path.glob("study.db.checkpoints/**/trainer.pt")), "finished: removed"


def test_checkpoint_every_is_at_least_one_epoch():
    with pytest.raises(UsageError, match="checkpoint_every must be at least 1"):
        ToyTuner("x", storage=":memory:", checkpoint_every=0)
