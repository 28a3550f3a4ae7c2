"""The log hook: each run gets its own time-stamped folder with ``log.txt`` and metric plots."""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from tunefleet.trainer._hooks import HookBase
from tunefleet.trainer._plots import plot_metrics

_ids = itertools.count()


def make_run_folder(out_dir: str, tag: str | None = None) -> str:
    """Create ``out_dir/YYYY_MM_DD_HH_MM_SS[_tag]``, adding ``_2``, ``_3``... when two runs
    (say two workers) start in the same second, so that no run writes into another's folder."""
    base = os.path.join(out_dir, time.strftime("%Y_%m_%d_%H_%M_%S") + (f"_{tag}" if tag else ""))
    os.makedirs(out_dir, exist_ok=True)
    for n in itertools.count(1):
        path = base if n == 1 else f"{base}_{n}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.6g}" for k, v in metrics.items())


class LogHook(HookBase):
    """Writes ``log.txt`` (start, train metrics every ``log_freq`` iterations, every validation,
    the outcome) and, at the end, ``train_metrics.png/.pdf`` and ``valid_metrics.png/.pdf``.
    ``tag`` is appended to the folder name (the tuner puts the trial number there).

    A run resumed from a checkpoint (``CheckpointHook``) starts its ``log.txt`` with the lines
    of the run it continues, then says where it resumed; its plots cover every epoch, since the
    history came back with the checkpoint."""

    priority = 10

    def __init__(self, out_dir: str = "runs", log_freq: int = 10, tag: str | None = None) -> None:
        self.out_dir = out_dir
        self.log_freq = max(1, log_freq)
        self.tag = tag
        self.folder: str | None = None
        self.logger: logging.Logger | None = None
        self._handler: logging.Handler | None = None
        self._started = 0.0
        self._earlier: dict[str, Any] | None = None  # the log of the run this one continues

    def before_train(self) -> None:
        self.folder = make_run_folder(self.out_dir, self.tag)
        self.logger = logging.getLogger(f"tunefleet.trainer.run{os.getpid()}_{next(_ids)}")
        self.logger.setLevel(logging.INFO)
        path = os.path.join(self.folder, "log.txt")
        if self._earlier is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(self._earlier["log"])
        self._handler = logging.FileHandler(path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s",
                                                     "%Y-%m-%d %H:%M:%S"))
        self.logger.addHandler(self._handler)
        self._started = time.time()
        t = self.trainer
        if self._earlier is not None:
            self.logger.info("resumed at epoch %d (iteration %d) from the checkpoint taken at the "
                             "end of epoch %d; the lines above are from %s", t.start_epoch,
                             t.iters_done, t.start_epoch - 1, self._earlier["folder"])
            return
        n_params = sum(p.numel() for p in t.model.parameters())
        self.logger.info("start: model %s (%d parameters) on %s, %d epochs, validation every %s "
                         "iterations", type(t.model).__name__, n_params, t.device, t.max_epoch,
                         t.valid_freq or "no")

    def after_iter(self) -> None:
        t = self.trainer
        if (t.current_iter + 1) % self.log_freq == 0 and self.logger is not None:
            train = {n: v for n, v in t.history.at(t.current_iter).items() if n.startswith("train_")}
            if train:
                self.logger.info("epoch %d iter %d: %s", t.current_epoch, t.current_iter,
                                 _fmt(train))

    def after_valid(self) -> None:
        t = self.trainer
        if self.logger is not None:
            valid = {n: v for n, v in t.history.at(t.current_iter).items() if n.startswith("valid_")}
            self.logger.info("epoch %d iter %d: validation %s", t.current_epoch, t.current_iter,
                             _fmt(valid))

    def state_dict(self) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        with open(os.path.join(self.folder, "log.txt"), encoding="utf-8") as f:
            return {"log": f.read(), "folder": self.folder}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._earlier = state

    def after_train(self) -> None:
        if self.logger is None or self.folder is None:
            return
        t = self.trainer
        try:
            self.logger.info("end: %s after %d iterations in %.1f s", t.outcome,
                             t.iters_done, time.time() - self._started)
            for kind in ("train", "valid"):
                series = {n: t.history.series[n] for n in t.history.names(kind)}
                plot_metrics(series, f"{kind} metrics", os.path.join(self.folder,
                                                                     f"{kind}_metrics"))
        finally:
            self.logger.removeHandler(self._handler)  # type: ignore[arg-type]
            self._handler.close()  # type: ignore[union-attr]
            self.logger = None
