"""Load the user's objects named on the command line: an objective from a ``path/to/file.py:name``
or ``package.module:name`` string, an artifact store from a bucket URL or the same form."""

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
    obj = _resolve(target)
    if not callable(obj):
        raise UsageError(f"target {target!r} is a {type(obj).__name__}, not a callable objective")
    return obj


#: Bucket URL schemes of ``load_artifact_store``: Optuna's store class and the extra it needs.
_BUCKETS = {"s3": ("Boto3ArtifactStore", "boto3"), "gs": ("GCSArtifactStore", "google-cloud-storage")}


def load_artifact_store(spec: str) -> Any:
    """The Optuna artifact store SPEC names: ``s3://BUCKET`` (``Boto3ArtifactStore``, with
    boto3's usual credentials and endpoint settings), ``gs://BUCKET`` (``GCSArtifactStore``), or
    ``path/to/file.py:name`` / ``package.module:name`` naming a store, or a class or function
    that makes one with no argument (for a store set up in code: an endpoint, a client)."""
    from tunefleet.checkpoint import check_artifact_store
    from tunefleet.errors import OptionError

    scheme, sep, rest = spec.partition("://")
    if sep and scheme in _BUCKETS:
        bucket = rest.strip("/")
        if not bucket or "/" in bucket:
            raise UsageError(f"--checkpoint-store {spec}: give a bucket alone ({scheme}://BUCKET); "
                             "artifact ids are the keys in it")
        name, package = _BUCKETS[scheme]
        import optuna.artifacts

        try:
            return getattr(optuna.artifacts, name)(bucket)
        except ImportError:
            raise UsageError(f"--checkpoint-store {spec} needs {package}: "
                             f"pip install {package}") from None
    if sep:
        raise UsageError(f"--checkpoint-store {spec}: an unknown scheme {scheme}://; give "
                         f"s3://BUCKET, gs://BUCKET, or module:name of a store (a folder is "
                         f"--checkpoint-dir)")
    store = _resolve(spec, what="--checkpoint-store")
    if callable(store) and not callable(getattr(store, "open_reader", None)):
        try:
            store = store()  # a factory
        except Exception as exc:  # the user's code
            raise UsageError(f"--checkpoint-store {spec}: making the store raised "
                             f"{type(exc).__name__}: {exc}") from None
    try:
        return check_artifact_store(store)
    except OptionError as exc:
        raise UsageError(f"--checkpoint-store {spec}: {exc}") from None


def _resolve(target: str, what: str = "target") -> Any:
    """The object TARGET (``file.py:name`` or ``module:name``) names; a class is instantiated
    with its defaults."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise UsageError(
            f"{what} {target!r} must look like path/to/file.py:name or package.module:name"
        )
    module = _load_module(module_part, target, what)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{what} {target!r}: {module_part} has no attribute {attr!r}") from None
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:  # the user's constructor
            raise UsageError(f"{what} {target!r}: could not build {attr}(): {exc}") from None
    return obj


def _load_module(module_part: str, target: str, what: str) -> Any:
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        path = os.path.abspath(module_part)
        if not os.path.isfile(path):
            raise UsageError(f"{what} {target!r}: no such file {module_part}")
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
                f"{what} {target!r}: syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}"
            ) from None
        except Exception as exc:
            sys.modules.pop(name, None)
            raise UsageError(
                f"{what} {target!r}: importing {module_part} raised {type(exc).__name__}: {exc}"
            ) from None
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        raise UsageError(f"{what} {target!r}: no module named {exc.name!r}") from None
    except SyntaxError as exc:
        raise UsageError(
            f"{what} {target!r}: syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"{what} {target!r}: importing {module_part} raised {type(exc).__name__}: {exc}"
        ) from None
