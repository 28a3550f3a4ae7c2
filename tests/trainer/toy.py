"""A tiny classification problem and trainer/tuner for the tests: trains in milliseconds."""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from tunefleet.trainer import Trainer, Tuner


def blobs(n: int = 192, seed: int = 0) -> TensorDataset:
    """Three well-separated Gaussian blobs in 4-d: easy to learn, impossible with lr=0."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    x = centers[y] + 0.5 * torch.randn(n, 4, generator=g)
    return TensorDataset(x, y)


class ToyTrainer(Trainer):
    def train_one_iter(self, batch: Any) -> None:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.train_out = {"loss": loss}

    def valid(self) -> None:
        correct = total = 0
        loss = 0.0
        for x, y in self.valid_loader:
            x, y = self.send_batch_to_device((x, y))
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        self.valid_out = {"loss": loss / total, "acc": correct / total}


def make_trainer(lr: float = 0.5, hidden: int = 8, max_epoch: int = 2, valid_freq: int = 3,
                 out_dir: str = "runs", **kwargs: Any) -> ToyTrainer:
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train = DataLoader(blobs(), batch_size=32, shuffle=True)
    valid = DataLoader(blobs(96, seed=1), batch_size=96)
    return ToyTrainer(model, opt, train, valid, device="cpu", max_epoch=max_epoch,
                      valid_freq=valid_freq, out_dir=out_dir, **kwargs)


class ToyTuner(Tuner):
    """lr and hidden width are tuned; every trial records what the tests check afterwards."""

    def __init__(self, *args: Any, out_dir: str = "runs", log: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out_dir = out_dir
        self.log = log  # the log hook's plots cost a second per trial on a small machine
        self.sleep = 0.0

    def get_suggested_params(self, trial: Any) -> dict[str, Any]:
        self._trial = trial
        return {"lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
                "hidden": trial.suggest_categorical("hidden", [4, 8, 16])}

    def get_other_cfg(self) -> dict[str, Any]:
        return {"max_epoch": 2, "valid_freq": 2}

    def load_items(self, **params: Any) -> ToyTrainer:
        trial = self._trial
        trial.set_user_attr("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("ppid", os.getppid())
        trial.set_user_attr("threads", torch.get_num_threads())
        trial.set_user_attr("first_weight", torch.nn.Linear(4, 1).weight[0, 0].item())
        time.sleep(self.sleep)
        return make_trainer(params["lr"], params["hidden"], params["max_epoch"],
                            params["valid_freq"], out_dir=self.out_dir, log=self.log)


def warm_up(tmp: str) -> None:
    """Pay torch's and matplotlib's first-use costs (optimizer machinery, fonts) once in the
    test process, so that forked workers inherit them instead of paying them per worker."""
    make_trainer(max_epoch=1, valid_freq=6, out_dir=tmp).run()
