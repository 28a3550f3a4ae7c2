"""Load the user's objective from a ``path/to/file.py:name`` or ``package.module:name`` string."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable

from tunefleet.errors import UsageError


def load_target(target: str) -> Callable[..., Any]:
    """Return the callable named by TARGET; a class is instantiated with its defaults.

    A file path is loaded as a module named after the file, with the file's folder put first
    on ``sys.path`` so that the script's own sibling imports work as they do under ``python``.
    """
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise UsageError(
            f"target {target!r} must look like path/to/file.py:name or package.module:name"
        )
    module = _load_module(module_part, target)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"target {target!r}: {module_part} has no attribute {attr!r}") from None
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:  # the user's constructor
            raise UsageError(f"target {target!r}: could not build {attr}(): {exc}") from None
    if not callable(obj):
        raise UsageError(f"target {target!r} is a {type(obj).__name__}, not a callable objective")
    return obj


def _load_module(module_part: str, target: str) -> Any:
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        path = os.path.abspath(module_part)
        if not os.path.isfile(path):
            raise UsageError(f"target {target!r}: no such file {module_part}")
        name = os.path.splitext(os.path.basename(path))[0]
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            # Workers on other hosts cannot import a script by name: ship its code by value.
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
        except SyntaxError as exc:
            sys.modules.pop(name, None)
            raise UsageError(
                f"target {target!r}: syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}"
            ) from None
        except Exception as exc:
            sys.modules.pop(name, None)
            raise UsageError(
                f"target {target!r}: importing {module_part} raised {type(exc).__name__}: {exc}"
            ) from None
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        raise UsageError(f"target {target!r}: no module named {exc.name!r}") from None
    except SyntaxError as exc:
        raise UsageError(
            f"target {target!r}: syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"target {target!r}: importing {module_part} raised {type(exc).__name__}: {exc}"
        ) from None
