"""The trainer's state, in one process: restored from a checkpoint, the next epochs give results
bit-identical to an uninterrupted run (model, optimizer, scheduler, history, every random
state); the checkpoint hook saves every N epochs only inside a tunefleet trial, and a resumed
run's trial reports, log and plots are whole."""

from __future__ import annotations

import random
import re
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tests.trainer.toy import ToyTrainer, blobs
from tunefleet import UsageError, checkpoint
from tunefleet.trainer import CheckpointHook, HookBase, TrialHook, seed_everything
from tunefleet.trainer import _log_hook

pytestmark = pytest.mark.timeout(90)
EPOCHS = 4  # 6 iterations an epoch, validation every 4th: it falls across epoch boundaries


class NoisyTrainer(ToyTrainer):
    """Draws from every generator a run touches: torch (dropout, the loader's shuffle), NumPy
    and Python's ``random`` (a jitter of the loss); steps a scheduler every iteration."""

    def train_one_iter(self, batch: Any) -> None:
        x, y = batch
        jitter = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        loss = F.cross_entropy(self.model(x), y) * jitter
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.scheduler.step()
        self.train_out = {"loss": loss}


def noisy_trainer(seed: int, **kwargs: Any) -> NoisyTrainer:
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    kwargs.setdefault("log", False)
    return NoisyTrainer(model, opt, DataLoader(blobs(), batch_size=32, shuffle=True),
                        DataLoader(blobs(96, seed=1), batch_size=96), device="cpu",
                        max_epoch=EPOCHS, valid_freq=4, scheduler=scheduler, **kwargs)


def _same(a: NoisyTrainer, b: NoisyTrainer) -> None:
    assert a.history.series == b.history.series  # exact floats, every step once
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    assert a.iters_done == b.iters_done == 6 * EPOCHS


class Stop(HookBase):
    """Ends the run after epoch ``epoch``, as a killed worker would (after the save)."""

    priority = 99

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def after_epoch(self) -> None:
        if self.trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt("stopped")


def test_restored_state_continues_bit_identical_to_an_uninterrupted_run(tmp_path):
    whole = noisy_trainer(seed=0)
    whole.run()

    first = noisy_trainer(seed=0, hooks=[Stop(1)])
    with pytest.raises(KeyboardInterrupt):
        first.run()
    torch.save(first.state_dict(), tmp_path / "state.pt")

    second = noisy_trainer(seed=123)  # other weights, other random states
    random.random(), np.random.rand(), torch.rand(3)  # and the generators moved on
    second.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert second.start_epoch == 2 and second.iters_done == 12
    epochs: list[int] = []

    class Epochs(HookBase):
        def before_epoch(self) -> None:
            epochs.append(self.trainer.current_epoch)

    second.register_hooks([Epochs()])
    second.run()
    assert epochs == [2, 3]
    _same(whole, second)
    assert whole.history.series["valid_acc"][-1][1] > 0.9  # it learnt something


class FakeTrial:
    """What the checkpoint functions read of a trial: its number."""

    def __init__(self, number: int) -> None:
        self.number = number


def test_the_hook_saves_every_n_epochs_in_a_trial_and_nothing_outside_one(tmp_path):
    store = checkpoint.FolderStore(tmp_path / "ckpt")
    saved: list[int] = []

    class Saves(HookBase):
        priority = 1  # just after the checkpoint hook

        def after_epoch(self) -> None:
            latest = store.latest(0)
            if latest is not None and latest.name not in saved:
                saved.append(latest.name)
                state = torch.load(latest / "trainer.pt", weights_only=False)
                epochs.append(state["epoch"])

    epochs: list[int] = []
    trial = FakeTrial(0)
    with checkpoint.running(checkpoint.LocalSession(store, 0, 0)):
        noisy_trainer(0, hooks=[CheckpointHook(trial, every=2), Saves()]).run()
    assert epochs == [1, 3]

    outside = noisy_trainer(0, hooks=[CheckpointHook(trial, every=1)])
    outside.run()  # no session: nothing saved, nothing restored
    assert outside.start_epoch == 0 and epochs == [1, 3]
    with pytest.raises(UsageError, match="every must be at least 1"):
        CheckpointHook(trial, every=0)


def test_a_resumed_trial_reports_logs_and_plots_every_epoch(tmp_path, monkeypatch):
    plotted: dict[str, list] = {}
    real_plot = _log_hook.plot_metrics

    def plot(series, title, stem):
        plotted[title] = {n: list(pts) for n, pts in series.items()}
        return real_plot(series, title, stem)

    monkeypatch.setattr(_log_hook, "plot_metrics", plot)
    store = checkpoint.FolderStore(tmp_path / "ckpt")
    runs = tmp_path / "runs"
    study = optuna.create_study(direction="maximize")
    whole = noisy_trainer(0)
    whole.run()

    lost = study.ask()
    hooks = [CheckpointHook(lost, every=1), TrialHook(lost, allow_prune=False), Stop(1)]
    with checkpoint.running(checkpoint.LocalSession(store, lost.number, lost.number)):
        with pytest.raises(KeyboardInterrupt):
            noisy_trainer(0, log=True, out_dir=str(runs), hooks=hooks).run()
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    plotted.clear()

    retry = study.ask()
    trial_hook = TrialHook(retry, allow_prune=False)
    resumed = noisy_trainer(5, log=True, out_dir=str(runs),
                            hooks=[CheckpointHook(retry, every=1), trial_hook])
    with checkpoint.running(checkpoint.LocalSession(store, retry.number, lost.number)):
        resumed.run()
    study.tell(retry, trial_hook.final_value())

    _same(whole, resumed)
    valid_steps = [s for s, _ in whole.history.series["valid_acc"]]
    assert valid_steps == [3, 7, 11, 15, 19, 23]
    done = study.trials[retry.number]
    assert sorted(done.intermediate_values) == valid_steps, "reports before the save came back"
    assert done.value == whole.history.values("valid_acc")[-1]
    assert [s for s, _ in plotted["train metrics"]["train_loss"]] == list(range(6 * EPOCHS))
    assert [s for s, _ in plotted["valid metrics"]["valid_acc"]] == valid_steps

    first, second = sorted(runs.iterdir())
    log = (second / "log.txt").read_text()
    earlier = (first / "log.txt").read_text()
    saved = earlier[:earlier.index("end: failed")]  # the lines up to the checkpoint
    assert log.startswith(saved.rsplit("\n", 1)[0] + "\n")  # the earlier lines, then this run's
    assert log.count("start: model Sequential") == 1
    assert f"resumed at epoch 2 (iteration 12) from the checkpoint taken at the end of epoch 1; " \
           f"the lines above are from {first}" in log
    assert valid_iters(log) == valid_steps
    assert "end: completed after 24 iterations" in log
    assert {"train_metrics.png", "valid_metrics.png"} <= {p.name for p in second.iterdir()}


def valid_iters(log: str) -> list[int]:
    """The iterations after which a log says it validated."""
    return [int(i) for i in re.findall(r"iter (\d+): validation", log)]


def test_a_trial_killed_after_its_last_epoch_saved_returns_its_value_without_training(tmp_path):
    store = checkpoint.FolderStore(tmp_path / "ckpt")
    study = optuna.create_study(direction="maximize")
    lost = study.ask()
    with checkpoint.running(checkpoint.LocalSession(store, lost.number, lost.number)):
        with pytest.raises(KeyboardInterrupt):
            noisy_trainer(0, hooks=[CheckpointHook(lost), TrialHook(lost), Stop(EPOCHS - 1)]).run()
    retry = study.ask()
    hook = TrialHook(retry)
    resumed = noisy_trainer(0, hooks=[CheckpointHook(retry), hook])
    with checkpoint.running(checkpoint.LocalSession(store, retry.number, lost.number)):
        resumed.run()
    assert resumed.start_epoch == EPOCHS and resumed.outcome == "completed"
    assert hook.final_value() == resumed.history.values("valid_acc")[-1]
