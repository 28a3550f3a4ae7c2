"""Tracking tests run W&B offline and MLflow against local stores under tmp_path."""

from __future__ import annotations

import pytest

from tests.trainer.toy import warm_up


@pytest.fixture(scope="session", autouse=True)
def _warm(tmp_path_factory):
    warm_up(str(tmp_path_factory.mktemp("warm")))


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B as a user without network runs it: offline, files under WANDB_DIR."""
    folder = tmp_path / "wb"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return folder
