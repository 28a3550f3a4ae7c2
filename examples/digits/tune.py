"""Tune a small CNN on scikit-learn's bundled 8x8 digits (nothing is downloaded), on 2 CPU
workers, with pruning, logged to W&B and MLflow.

    python examples/digits/tune.py                  # 8 trials, 3 epochs, 2 workers
    python examples/digits/tune.py --n-trials 4 --epochs 2 --no-wandb

Writes under the current folder: ``runs/`` (a log.txt and plots per trial), ``wandb/`` (offline
runs unless WANDB_MODE says otherwise; ``wandb sync wandb/offline-run-*`` uploads them later)
and MLflow's default store ``mlflow.db`` (or MLFLOW_TRACKING_URI; ``mlflow ui`` shows it).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tunefleet.trainer import Trainer, Tuner


def digits_loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    """The 1,797 bundled 8x8 digit images, 80 % for training and 20 % for validation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    train, valid = order[:cut], order[cut:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(x[valid], y[valid]), batch_size=512))


class SmallCNN(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc1 = nn.Linear(2 * channels * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 8x8 -> 4x4
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class DigitsTrainer(Trainer):
    def train_one_iter(self, batch: Any) -> None:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.train_out = {"loss": loss}

    def valid(self) -> None:
        loss = correct = total = 0.0
        for batch in self.valid_loader:
            x, y = self.send_batch_to_device(batch)
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        self.valid_out = {"loss": loss / total, "acc": correct / total}


class DigitsTuner(Tuner):
    def get_suggested_params(self, trial: Any) -> dict[str, Any]:
        return {"lr": trial.suggest_float("lr", 1e-4, 3e-1, log=True),
                "hidden": trial.suggest_categorical("hidden", [16, 32, 64, 128])}

    def get_other_cfg(self) -> dict[str, Any]:
        return {"channels": 8, "batch_size": 64, "max_epoch": self.epochs, "valid_freq": 10}

    def load_items(self, **cfg: Any) -> DigitsTrainer:
        model = SmallCNN(cfg["channels"], cfg["hidden"])
        train, valid = digits_loaders(cfg["batch_size"])
        return DigitsTrainer(model, torch.optim.Adam(model.parameters(), lr=cfg["lr"]), train,
                             valid, max_epoch=cfg["max_epoch"], valid_freq=cfg["valid_freq"],
                             out_dir="runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--storage", default=":memory:", help="e.g. sqlite:///digits.db")
    parser.add_argument("--study", default="digits")
    parser.add_argument("--no-wandb", action="store_true")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()

    from tunefleet.tracking import MlflowTracker, WandbTracker

    trackers: list = []
    if not args.no_wandb:
        if "WANDB_API_KEY" not in os.environ:
            os.environ.setdefault("WANDB_MODE", "offline")  # no account needed to try it
        trackers.append(WandbTracker(project=os.environ.get("WANDB_PROJECT", "tunefleet-digits")))
    if not args.no_mlflow:
        trackers.append(MlflowTracker())
    tuner = DigitsTuner(args.study, "valid_acc", n_trials=args.n_trials, n_workers=args.workers,
                        storage=args.storage, report_last_n=2, trackers=trackers)
    tuner.epochs = args.epochs
    # Two known-good starting points run first; the sampler takes over after them.
    tuner.run(trial_param_list=[{"lr": 3e-3, "hidden": 64}, {"lr": 1e-2, "hidden": 32}])


if __name__ == "__main__":
    main()
