"""Checkpoints that follow a trial to its retry: a long trial continues where it stopped when
its worker dies, is stopped, preempted or goes silent.

    ckpt = tunefleet.checkpoint.load(trial)      # a directory, or None for a fresh trial
    start = read_epoch(ckpt) + 1 if ckpt else 0
    for epoch in range(start, n_epochs):
        ...
        with tunefleet.checkpoint.save(trial) as d:  # a new empty directory, kept whole
            torch.save(state, d / "state.pt")

See docs/checkpoints.md. ``FolderStore`` (a folder) or ``ArtifactCheckpoints`` (an Optuna
artifact store) is where they live; worker loops open a ``Session`` per trial (the store's
``session``) and run the trial in it (``running``).
"""

from tunefleet.checkpoint._api import load, save
from tunefleet.checkpoint._artifacts import (ArtifactCheckpoints, ArtifactSession,
                                             check_artifact_store)
from tunefleet.checkpoint._preemption import in_trial, install_preemption
from tunefleet.checkpoint._session import (LocalSession, Preempted, Session, current,
                                           request_stop, reset_stop, running, stop_deadline,
                                           stop_requested)
from tunefleet.checkpoint._store import FolderStore, default_root

__all__ = ["load", "save", "ArtifactCheckpoints", "ArtifactSession", "check_artifact_store",
           "FolderStore", "default_root", "Session",
           "LocalSession", "Preempted", "current", "running", "request_stop", "reset_stop", "stop_deadline",
           "stop_requested", "install_preemption", "in_trial"]
