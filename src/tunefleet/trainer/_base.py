"""The training loop: epochs and batches, with hooks around it and validation every
``valid_freq`` iterations. The user writes ``train_one_iter`` and ``valid`` and puts metrics in
``train_out`` / ``valid_out``; logging, plots, trial reports and tracking are hooks."""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import torch

from tunefleet.errors import UsageError
from tunefleet.trainer._history import MetricHistory
from tunefleet.trainer._hooks import HookBase
from tunefleet.trainer._seeding import rng_state, set_rng_state

#: How the run ended, by the exception that ended it; any other exception is "failed".
_OUTCOMES = {"TrialPruned": "pruned", "Preempted": "preempted"}


def default_device() -> torch.device:
    """The first visible GPU when there is one (``CUDA_VISIBLE_DEVICES`` picks it), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def send_to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor inside it (tuples, lists, dicts, nested) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: send_to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(send_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(send_to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Subclass it and implement ``train_one_iter(batch)`` (fill ``self.train_out``) and
    ``valid()`` (fill ``self.valid_out``; it runs under ``torch.no_grad`` in eval mode).

    A ``LogHook`` is on by default: each run writes ``log.txt`` and metric plots into its own
    time-stamped folder under ``out_dir``. ``valid_freq=0`` turns validation off. ``scheduler``
    (a learning-rate scheduler that you step) is kept so that checkpoints include it.
    """

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer | None,
                 train_loader: Iterable[Any], valid_loader: Iterable[Any] | None = None,
                 test_loader: Iterable[Any] | None = None, device: torch.device | str | None = None,
                 max_epoch: int = 1, valid_freq: int = 1, *, out_dir: str = "runs",
                 log_freq: int = 10, log: bool = True, hooks: Iterable[HookBase] = (),
                 scheduler: Any = None) -> None:
        if max_epoch < 1:
            raise UsageError(f"max_epoch must be at least 1, not {max_epoch}")
        if valid_freq < 0:
            raise UsageError(f"valid_freq must be 0 (off) or more, not {valid_freq}")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.opt = opt
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.valid_loader = valid_loader
        self.test_loader = test_loader
        self.max_epoch = max_epoch
        self.valid_freq = valid_freq
        self.history = MetricHistory()
        self.train_out: dict[str, Any] = {}
        self.valid_out: dict[str, Any] = {}
        self.current_epoch = 0
        self.current_iter = 0
        self.start_epoch = 0  # where run() starts: 0, or the epoch after a restored checkpoint
        self.iters_done = 0
        self.outcome = "not started"  # then running, completed, pruned, preempted or failed
        self.hooks: list[HookBase] = []
        self.log_hook = None
        if log:
            from tunefleet.trainer._log_hook import LogHook

            self.log_hook = LogHook(out_dir, log_freq=log_freq)
            self.register_hooks([self.log_hook])
        self.register_hooks(hooks)

    # -- what the user writes ------------------------------------------------------------------
    def train_one_iter(self, batch: Any) -> None:
        raise NotImplementedError("implement train_one_iter(batch) and fill self.train_out")

    def valid(self) -> None:
        raise NotImplementedError("implement valid() and fill self.valid_out, or set valid_freq=0")

    # -- the loop ------------------------------------------------------------------------------
    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        """Add hooks; they run in ``priority`` order, equal priorities in registration order."""
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)
        self.hooks.sort(key=lambda h: h.priority)

    def send_batch_to_device(self, batch: Any) -> Any:
        return send_to_device(batch, self.device)

    def run(self) -> MetricHistory:
        """Train up to ``max_epoch`` epochs and return the metric history. ``after_train`` hooks
        run also when a hook or the user's code stops the run (pruning, an error). A run whose
        state was restored (``load_state_dict``, which a ``CheckpointHook`` calls in its
        ``before_train``) continues at ``start_epoch``, counting iterations on."""
        self.outcome = "running"
        self._call("before_train")
        try:
            step = self.iters_done
            for epoch in range(self.start_epoch, self.max_epoch):
                self.current_epoch = epoch
                self._call("before_epoch")
                for batch in self.train_loader:
                    self.current_iter = step
                    self._call("before_iter")
                    self.model.train()
                    self.train_out = {}
                    self.train_one_iter(self.send_batch_to_device(batch))
                    self.iters_done = step + 1
                    self.history.record("train", self.train_out, step)
                    if self.valid_freq and (step + 1) % self.valid_freq == 0:
                        self.validate()
                    self._call("after_iter")
                    step += 1
                self._call("after_epoch")
            self.outcome = "completed"
        except BaseException as exc:
            self.outcome = _OUTCOMES.get(type(exc).__name__, "failed")
            self._after_train(quiet=True)
            raise
        self._after_train(quiet=False)
        return self.history

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs, taken at the end of epoch ``current_epoch``: model,
        optimizer, scheduler, epoch, iteration count, metric history, random states and the
        state of hooks that keep one."""
        hooks = {}
        for key, hook in self._keyed_hooks():
            state = hook.state_dict()
            if state is not None:
                hooks[key] = state
        return {"epoch": self.current_epoch, "iters_done": self.iters_done,
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict() if self.opt is not None else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "history": self.history.state_dict(), "rng": rng_state(), "hooks": hooks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next ``run()`` starts at the epoch after it, and
        draws the random numbers that the uninterrupted run would have drawn."""
        self.model.load_state_dict(state["model"])
        if self.opt is not None and state["opt"] is not None:
            self.opt.load_state_dict(state["opt"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history.load_state_dict(state["history"])
        self.current_epoch = state["epoch"]
        self.start_epoch = state["epoch"] + 1
        self.iters_done = state["iters_done"]
        self.current_iter = self.iters_done - 1
        for key, hook in self._keyed_hooks():
            if key in state["hooks"]:
                hook.load_state_dict(state["hooks"][key])
        set_rng_state(state["rng"])

    def _keyed_hooks(self) -> list[tuple[str, HookBase]]:
        """Each hook with a name that the same hooks have in a resumed run (class name, and a
        count when a class has several)."""
        seen: dict[str, int] = {}
        out = []
        for hook in self.hooks:
            name = type(hook).__name__
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", hook))
        return out

    def validate(self) -> None:
        """Run ``valid()`` in eval mode without gradients, record ``valid_out``, call hooks."""
        self.model.eval()
        self.valid_out = {}
        with torch.no_grad():
            self.valid()
        self.history.record("valid", self.valid_out, self.current_iter)
        self._call("after_valid")

    def _call(self, point: str) -> None:
        for hook in self.hooks:
            getattr(hook, point)()

    def _after_train(self, quiet: bool) -> None:
        """Every hook's ``after_train``, even when one fails; while another exception is on its
        way out, their failures are warnings so they do not hide it."""
        first: BaseException | None = None
        for hook in self.hooks:
            try:
                hook.after_train()
            except Exception as exc:
                if quiet:
                    warnings.warn(f"{type(hook).__name__}.after_train failed: {exc}", stacklevel=2)
                elif first is None:
                    first = exc
        if first is not None:
            raise first
