"""The trainer's loop: hook order, validation mode, device placement, metric history."""

from __future__ import annotations

import collections

import pytest
import torch

from tests.trainer.toy import ToyTrainer, make_trainer
from tunefleet.trainer import HookBase, send_to_device

pytestmark = pytest.mark.timeout(60)


class Recorder(HookBase):
    def __init__(self, events: list) -> None:
        self.events = events

    def before_train(self) -> None:
        self.events.append("before_train")

    def before_iter(self) -> None:
        self.events.append(f"before_iter {self.trainer.current_iter}")

    def after_valid(self) -> None:
        self.events.append(f"after_valid {self.trainer.current_iter}")

    def after_iter(self) -> None:
        self.events.append(f"after_iter {self.trainer.current_iter}")

    def after_train(self) -> None:
        self.events.append(f"after_train {self.trainer.outcome}")


def test_hooks_run_in_order_with_validation_every_valid_freq_iterations(tmp_path):
    events: list[str] = []
    trainer = make_trainer(max_epoch=2, valid_freq=4, out_dir=str(tmp_path), log=False,
                           hooks=[Recorder(events)])
    history = trainer.run()  # 192 samples / 32 = 6 iterations per epoch, 12 in all
    expected = ["before_train"]
    for it in range(12):
        expected.append(f"before_iter {it}")
        if (it + 1) % 4 == 0:
            expected.append(f"after_valid {it}")
        expected.append(f"after_iter {it}")
    expected.append("after_train completed")
    assert events == expected
    assert [s for s, _ in history.series["valid_acc"]] == [3, 7, 11]
    assert len(history.values("train_loss")) == 12
    assert history.values("valid_acc")[-1] > 0.9  # the toy problem is learnt


def test_hook_priority_decides_order_and_after_train_runs_when_training_fails(tmp_path):
    events: list[str] = []

    class Late(Recorder):
        priority = 99

        def before_train(self) -> None:
            self.events.append("late")

    class Boom(ToyTrainer):
        def train_one_iter(self, batch):
            if self.current_iter == 2:
                raise RuntimeError("boom")
            super().train_one_iter(batch)

    trainer = make_trainer(log=False)
    boom = Boom(trainer.model, trainer.opt, trainer.train_loader, trainer.valid_loader,
                device="cpu", max_epoch=1, valid_freq=0, log=False,
                hooks=[Late(events), Recorder(events)])
    with pytest.raises(RuntimeError, match="boom"):
        boom.run()
    assert events[:2] == ["before_train", "late"]
    assert events[-1] == "after_train failed"
    assert boom.iters_done == 2


def test_valid_runs_in_eval_mode_without_gradients():
    seen = []

    class Check(ToyTrainer):
        def train_one_iter(self, batch):
            seen.append(("train", self.model.training, torch.is_grad_enabled()))
            super().train_one_iter(batch)

        def valid(self):
            seen.append(("valid", self.model.training, torch.is_grad_enabled()))
            super().valid()

    t = make_trainer(log=False)
    Check(t.model, t.opt, t.train_loader, t.valid_loader, device="cpu", max_epoch=1,
          valid_freq=2, log=False).run()
    assert set(seen) == {("train", True, True), ("valid", False, False)}
    assert sum(1 for s in seen if s[0] == "valid") == 3


def test_batches_reach_train_one_iter_on_the_trainer_device():
    # The meta device stands in for a GPU: tensors moved there report it.
    Pair = collections.namedtuple("Pair", "x y")
    batch = {"a": torch.ones(2), "nested": [Pair(torch.zeros(1), 3), (torch.ones(1), "s")]}
    moved = send_to_device(batch, "meta")
    assert moved["a"].device.type == "meta"
    assert isinstance(moved["nested"][0], Pair) and moved["nested"][0].x.device.type == "meta"
    assert moved["nested"][0].y == 3 and moved["nested"][1][1] == "s"
    assert moved["nested"][1][0].device.type == "meta"

    got = []

    class Spy(ToyTrainer):
        def train_one_iter(self, batch):
            got.append(tuple(t.device.type for t in batch))

    t = make_trainer(log=False)
    Spy(torch.nn.Linear(1, 1), None, t.train_loader, device="meta", valid_freq=0,
        log=False).run()
    assert got and set(got) == {("meta", "meta")}


def test_metrics_are_named_by_kind_and_non_scalars_are_skipped():
    class Named(ToyTrainer):
        def train_one_iter(self, batch):
            self.train_out = {"loss": torch.tensor(2.0), "train_lr": 0.5, "vec": torch.ones(3)}

        def valid(self):
            self.valid_out = {"acc": 1, "valid_f1": torch.tensor([0.25])}

    t = make_trainer(log=False)
    h = Named(t.model, None, t.train_loader, t.valid_loader, device="cpu", valid_freq=6,
              log=False).run()
    assert sorted(h) == ["train_loss", "train_lr", "valid_acc", "valid_f1"]
    assert h.values("valid_f1") == [0.25] and h.values("train_loss")[0] == 2.0


def test_import_tunefleet_does_not_import_torch_or_trackers():
    import subprocess
    import sys

    code = ("import sys, tunefleet, tunefleet.tracking, tunefleet.trainer; "
            "tunefleet.trainer.Tuner; "
            "print(sorted(m for m in ('torch', 'wandb', 'mlflow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
