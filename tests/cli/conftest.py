"""Fixtures of the CLI tests: a Python whose import system hides some installed modules, so that
a command can be run as it runs after a plain install without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVES = Path(__file__).resolve().parent / "objectives.py"

_HIDER = '''
import os
import sys

_HIDDEN = {m for m in os.environ.get("TF_HIDE_MODULES", "").split(",") if m}


class _Hide:
    """Behave as if the modules of TF_HIDE_MODULES were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hide())
'''


@pytest.fixture
def without(tmp_path_factory):
    """``without("cmaes", "scipy")`` -> the environment of a Python in which these modules are
    not installed (a ``sitecustomize`` on PYTHONPATH makes their import fail)."""
    folder = tmp_path_factory.mktemp("hide")
    (folder / "sitecustomize.py").write_text(_HIDER)

    def env(*modules: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(folder), str(ROOT),
                                           os.environ.get("PYTHONPATH")) if p)
        return {"PYTHONPATH": path, "TF_HIDE_MODULES": ",".join(modules)}

    return env
