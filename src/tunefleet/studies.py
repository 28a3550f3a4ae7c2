"""Open storages and studies from command-line style settings, with one-line errors.

Every command (``run``, ``serve``, ``init``, ``worker``, ``peer``, ``best``, ``report``) goes
through here, so a storage URL or a sampler name means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import optuna

from tunefleet.errors import UsageError

DEFAULT_STORAGE = "sqlite:///tunefleet.db"
DEFAULT_STUDY = "tunefleet"
SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "nsga2")
PRUNERS = ("median", "hyperband", "none")
SPEC_ATTR = "tunefleet:spec"


def open_storage(url: str | None, *, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 sqlite_wal: bool = False) -> optuna.storages.BaseStorage:
    """Return the storage a URL names: ``sqlite://``, ``postgresql://``, ``mysql://``,
    ``journal:///path`` or a path ending in ``.log`` (Optuna's journal file), or ``:memory:``.

    ``sqlite_wal`` puts a SQLite file in write-ahead-log mode with ``synchronous=NORMAL``: a
    commit no longer waits for the disk, which makes a single writer (the hub's coordinator)
    about ten times faster while staying safe against a crash of the process. Keep such a
    file on a local disk (WAL needs shared memory, which network file systems lack)."""
    url = url or DEFAULT_STORAGE
    if url in (":memory:", "memory", "inmemory"):
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal://") or url.endswith(".log") or url.endswith(".journal"):
        path = url[len("journal://"):] if url.startswith("journal://") else url
        if not path:
            raise UsageError(f"storage {url!r}: journal storage needs a file path")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError(f"storage {url!r}: folder {folder} does not exist")
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        return optuna.storages.JournalStorage(
            JournalFileBackend(path, lock_obj=JournalFileOpenLock(path))
        )
    if "://" not in url:
        raise UsageError(
            f"storage {url!r} is not a URL: use sqlite:///file.db, postgresql://user@host/db, "
            "mysql+pymysql://user@host/db, journal:///path/file.log or a path ending in .log"
        )
    if url.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(url[len("sqlite:///"):]))
        if not os.path.isdir(folder):
            raise UsageError(f"storage {url!r}: folder {folder} does not exist")
    kwargs: dict[str, Any] = {}
    if sqlite_wal and url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat_interval is not None:
        kwargs["heartbeat_interval"] = heartbeat_interval
        kwargs["grace_period"] = grace_period
    try:
        storage = optuna.storages.RDBStorage(url, **kwargs)
        if sqlite_wal and url.startswith("sqlite:"):
            _sqlite_wal(storage)
        return storage
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"storage {url!r} needs the Python module {exc.name!r}: "
            f"pip install 'tunefleet[postgres]' or 'tunefleet[mysql]'"
        ) from None
    except Exception as exc:  # sqlalchemy's ArgumentError, OperationalError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"storage {url!r} cannot be opened: {first}") from None


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened before the listener get the pragmas on reconnect


def build_sampler(name: str | None, seed: int | None = None,
                  n_objectives: int = 1) -> optuna.samplers.BaseSampler:
    """The sampler called NAME (one of SAMPLERS); None picks Optuna's default for the study."""
    if name is None:
        name = "nsga2" if n_objectives > 1 else "tpe"
    name = name.lower()
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
    except ImportError as exc:
        raise UsageError(f"sampler {name!r} needs a package that is not installed: {exc}") from None
    raise UsageError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def build_pruner(name: str | None) -> optuna.pruners.BasePruner:
    """The pruner called NAME (one of PRUNERS); None means median, as in Optuna."""
    name = (name or "median").lower()
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"unknown pruner {name!r}: choose one of {', '.join(PRUNERS)}")


@dataclasses.dataclass
class StudySpec:
    """What a study is made of, as the command line says it; stored in the study so that every
    worker that joins later builds the same sampler and pruner."""

    directions: list[str] = dataclasses.field(default_factory=lambda: ["minimize"])
    sampler: str | None = None
    seed: int | None = None
    pruner: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudySpec":
        return cls(**json.loads(text))


def _check_directions(directions: Sequence[str]) -> list[str]:
    out = [d.lower() for d in directions] or ["minimize"]
    for d in out:
        if d not in ("minimize", "maximize"):
            raise UsageError(f"direction {d!r} must be minimize or maximize")
    return out


def create_or_load_study(
    storage: str | optuna.storages.BaseStorage | None,
    study_name: str | None,
    spec: StudySpec | None = None,
    *,
    directions_given: bool = True,
) -> optuna.Study:
    """Create the study or load it when it exists, refusing a direction that does not match.

    The spec is recorded in the study's system attributes the first time; when the study exists
    and the caller gave no sampler of its own, the recorded spec is used, so every worker of a
    study builds the same sampler and pruner.
    """
    spec = spec or StudySpec()
    directions = _check_directions(spec.directions)
    store = storage if isinstance(storage, optuna.storages.BaseStorage) else open_storage(storage)
    name = study_name or DEFAULT_STUDY
    existing = _find_study(store, name)
    if existing is not None:
        have = [d.name.lower() for d in existing.directions]
        if directions_given and have != directions:
            raise UsageError(
                f"study {name!r} exists with direction {' '.join(have)}, "
                f"not {' '.join(directions)}: pass --direction {' '.join(have)} or another --study"
            )
        recorded = existing.system_attrs.get(SPEC_ATTR)
        if recorded and spec.sampler is None and spec.pruner is None and spec.seed is None:
            spec = StudySpec.from_json(recorded)
        directions = have
    sampler = build_sampler(spec.sampler, spec.seed, len(directions))
    pruner = build_pruner(spec.pruner)
    study = optuna.create_study(
        storage=store,
        study_name=name,
        directions=directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if existing is None or SPEC_ATTR not in existing.system_attrs:
        spec.directions = directions
        study._storage.set_study_system_attr(study._study_id, SPEC_ATTR, spec.to_json())
    return study


def load_study(storage: str | None, study_name: str | None) -> optuna.Study:
    """Load an existing study, with a one-line error listing the studies there when it is absent."""
    store = open_storage(storage)
    names = [s.study_name for s in _all_studies(store)]
    if study_name is None:
        if len(names) == 1:
            study_name = names[0]
        else:
            raise UsageError(
                f"say which study with --study: the storage holds {', '.join(names) or 'none'}"
            )
    if study_name not in names:
        raise UsageError(
            f"no study {study_name!r} in {storage or DEFAULT_STORAGE}; "
            f"it holds: {', '.join(names) or 'no study'}"
        )
    return optuna.load_study(study_name=study_name, storage=store)


def _all_studies(store: optuna.storages.BaseStorage) -> list[optuna.study.FrozenStudy]:
    try:
        return store.get_all_studies()
    except Exception as exc:
        raise UsageError(f"cannot read studies from the storage: {exc}") from None


def _find_study(store: optuna.storages.BaseStorage, name: str) -> optuna.study.FrozenStudy | None:
    for s in _all_studies(store):
        if s.study_name == name:
            return s
    return None
