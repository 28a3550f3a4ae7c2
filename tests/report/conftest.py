"""Fixtures of the report's tests: a headless Chromium shared by the module, and a folder for
artifacts (screenshots, the HTML they show) that CI keeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.report.browser import Browser, chromium_binary

ARTIFACTS = Path(os.environ.get("TUNEFLEET_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "report"


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    assert binary, "Chromium is missing: bash scripts/install-system-deps.sh installs it"
    with Browser(binary) as b:
        yield b


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
