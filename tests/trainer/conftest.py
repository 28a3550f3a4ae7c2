"""Trainer tests share one warmed-up process (see ``toy.warm_up``)."""

from __future__ import annotations

import pytest

from tests.trainer.toy import warm_up


@pytest.fixture(scope="session", autouse=True)
def _warm(tmp_path_factory):
    warm_up(str(tmp_path_factory.mktemp("warm")))
