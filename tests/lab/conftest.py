"""The ``netlab`` fixture: a fresh network lab per test (see ``tests/lab/netlab.py``), removed
afterwards whatever the test did. A machine where the lab cannot be built fails the test with
the reason; it never skips."""

from __future__ import annotations

import pytest

from tests.lab.netlab import Lab, LabError, remove_stale_labs, require_netns


@pytest.fixture
def netlab():
    try:
        require_netns()
        remove_stale_labs()
        lab = Lab()
    except LabError as exc:
        pytest.fail(f"network lab: {exc}", pytrace=False)
    try:
        yield lab
    finally:
        lab.close()
