"""Open storages and studies from command-line style settings, with one-line errors.

Every command (``run``, ``serve``, ``init``, ``worker``, ``peer``, ``best``, ``report``) goes
through here, so a storage URL or a sampler name means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import optuna

from tunefleet._filelock import file_mutex
from tunefleet._optuna import open_stamped_rdb
from tunefleet.errors import UsageError

DEFAULT_STORAGE = "sqlite:///tunefleet.db"
DEFAULT_STUDY = "tunefleet"
SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "nsga2", "grid", "bruteforce")
#: sampler -> the modules it imports beyond Optuna's own dependencies, and the extra that
#: installs them; checked before the study is touched, so that a missing one is a one-line
#: error instead of a traceback in the middle of the first trial.
SAMPLER_NEEDS = {
    "cmaes": (("cmaes",), "cmaes"),
    "gp": (("torch", "scipy"), "gp"),
    "qmc": (("scipy",), "qmc"),
}
PRUNERS = ("median", "hyperband", "none")
SPEC_ATTR = "tunefleet:spec"


#: SQLAlchemy driver name -> (module it imports, what to pip install for it).
DRIVERS = {
    "psycopg": ("psycopg", "'tunefleet[postgres]' (psycopg 3)"),
    "psycopg2": ("psycopg2", "psycopg2-binary"),
    "pg8000": ("pg8000", "pg8000"),
    "pymysql": ("pymysql", "'tunefleet[mysql]' (PyMySQL)"),
    "mysqldb": ("MySQLdb", "mysqlclient (it builds against libmariadb-dev or libmysqlclient-dev)"),
    "mysqlconnector": ("mysql.connector", "mysql-connector-python"),
    "mariadbconnector": ("mariadb", "mariadb"),
}
#: the drivers tried, in order, for a URL that names none: the first one installed is used,
#: so that the URLs of the documents (postgresql://, mysql://) work with either driver.
DEFAULT_DRIVERS = {
    "postgresql": ("psycopg", "psycopg2"),
    "mysql": ("mysqldb", "pymysql"),
    "mariadb": ("mysqldb", "pymysql"),
}


def module_installed(module: str) -> bool:
    """Whether MODULE can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def shown_url(url: str) -> str:
    """URL with its password hidden, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def driver_url(url: str) -> str:
    """The SQLAlchemy URL for a storage URL: ``postgres://`` is ``postgresql://``; a URL that
    names no driver gets the first installed one of ``DEFAULT_DRIVERS`` (SQLAlchemy's own
    default depends on its version: psycopg2 in 2.0, psycopg 3 in 2.1). A driver that is not
    installed is a one-line error saying which package to install."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme in ("postgres",) or scheme.startswith("postgres+"):
        scheme = "postgresql" + scheme[len("postgres"):]
    dialect, _, driver = scheme.partition("+")
    if dialect == "sqlite":
        return url
    if not driver:
        tried = DEFAULT_DRIVERS.get(dialect)
        if tried is None:
            return f"{scheme}://{rest}"
        for name in tried:
            if module_installed(DRIVERS[name][0]):
                return f"{dialect}+{name}://{rest}"
        raise UsageError(f"storage {shown_url(url)} needs a {dialect} driver: pip install "
                         + " or ".join(DRIVERS[n][1] for n in tried))
    module, package = DRIVERS.get(driver.lower(), (None, None))
    if module is not None and not module_installed(module):
        raise UsageError(f"storage {shown_url(url)} needs the {driver} driver: "
                         f"pip install {package}")
    return f"{scheme}://{rest}"


def _sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///file`` URL; None for an in-memory one."""
    path = url[len("sqlite:///"):].split("?", 1)[0] if url.startswith("sqlite:///") else ""
    return path if path and path != ":memory:" else None


def open_storage(url: str | None, *, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, sqlite_wal: bool = False,
                 create: bool = True,
                 idle_transaction_limit: float | None = None) -> optuna.storages.BaseStorage:
    """Return the storage a URL names: ``sqlite://``, ``postgresql://``, ``mysql://``,
    ``journal:///path`` or a path ending in ``.log`` (Optuna's journal file), or ``:memory:``.

    ``sqlite_wal`` puts a SQLite file in write-ahead-log mode with ``synchronous=NORMAL``: a
    commit no longer waits for the disk, which makes a single writer (the hub's coordinator)
    about ten times faster while staying safe against a crash of the process. Keep such a
    file on a local disk (WAL needs shared memory, which network file systems lack).

    ``create=False`` is for commands that only read (``best``, ``report``): a SQLite or journal
    file that does not exist is an error there, not a new empty study database.

    ``idle_transaction_limit`` (seconds; PostgreSQL): the server ends this client's session
    when it leaves a transaction open that long. A worker cut off by the network in the middle
    of a write otherwise holds its locks until the server's TCP keepalive notices, hours later,
    and the workers that fail its trial wait on them."""
    url = url or DEFAULT_STORAGE
    if url in (":memory:", "memory", "inmemory"):
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal://") or url.endswith(".log") or url.endswith(".journal"):
        path = url[len("journal://"):] if url.startswith("journal://") else url
        if not path:
            raise UsageError(f"storage {url!r}: journal storage needs a file path")
        _check_file(url, path, create)
        from optuna.storages.journal import JournalFileBackend

        from tunefleet._journal import repair_tail
        from tunefleet._optuna import journal_file_lock

        lock = journal_file_lock(path)
        repair_tail(path, lock)  # a torn last record would make the next append unreadable
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=lock))
    if "://" not in url:
        raise UsageError(
            f"storage {url!r} is not a URL: use sqlite:///file.db, postgresql://user@host/db, "
            "mysql://user@host/db, journal:///path/file.log or a path ending in .log"
        )
    sqlite_file = _sqlite_path(url)
    if sqlite_file is not None:
        _check_file(url, sqlite_file, create)
    engine_url = driver_url(url)
    kwargs: dict[str, Any] = {}
    if sqlite_wal and url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat_interval is not None:
        kwargs["heartbeat_interval"] = heartbeat_interval
        kwargs["grace_period"] = grace_period
    if idle_transaction_limit is not None and engine_url.startswith("postgresql"):
        from sqlalchemy.engine import make_url

        given = make_url(engine_url).query.get("options")  # the user's own -c settings stay
        limit = f"-c idle_in_transaction_session_timeout={int(idle_transaction_limit * 1000)}"
        options = f"{given} {limit}" if isinstance(given, str) else limit
        kwargs["engine_kwargs"] = {"connect_args": {"options": options}}
    try:
        if sqlite_file is not None and create:
            # Two processes that create a new file's tables at once fail ("UNIQUE constraint
            # failed: alembic_version"): one at a time.
            with file_mutex(sqlite_file, f"creating the tables of {sqlite_file}"):
                storage = _new_or_existing_sqlite(sqlite_file, engine_url, kwargs)
        else:
            storage = optuna.storages.RDBStorage(engine_url, **kwargs)
        if sqlite_wal and url.startswith("sqlite:"):
            _sqlite_wal(storage)
        return storage
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"storage {shown_url(url)} needs the Python module {exc.name!r}: "
            f"pip install 'tunefleet[postgres]' or 'tunefleet[mysql]'"
        ) from None
    except Exception as exc:  # sqlalchemy's ArgumentError, OperationalError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"storage {shown_url(url)} cannot be opened: {first}") from None


def _check_file(url: str, path: str, create: bool) -> None:
    """A storage file's folder exists; a file only read (``create=False``) exists too."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"storage {url!r}: folder {folder} does not exist")
    if not create and not os.path.exists(path):
        raise UsageError(f"storage {url!r}: no such file {os.path.abspath(path)}")


def _schema_template() -> Path:
    """Where a SQLite file holding only Optuna's tables (this Optuna version's) is kept: a new
    study file starts as a copy of it instead of creating its tables and stamping their
    version (0.6-0.9 s of Optuna's ``create_study`` on a fresh file, against milliseconds)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunefleet"
    return cache / f"optuna-{optuna.__version__}-tables.db"


def _new_or_existing_sqlite(path: str, engine_url: str,
                            kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    """The RDBStorage of a SQLite file; a new (empty) one starts from the tables' template when
    there is one, and the first one made on this machine becomes the template."""
    template = _schema_template()
    if os.path.getsize(path) == 0 and template.is_file():
        shutil.copyfile(template, path)
        return open_stamped_rdb(engine_url, **kwargs)
    new = os.path.getsize(path) == 0
    storage = optuna.storages.RDBStorage(engine_url, **kwargs)
    if new:
        try:
            template.parent.mkdir(parents=True, exist_ok=True)
            tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)  # the tables only: no study was written yet
            os.replace(tmp, template)
        except OSError:
            pass  # no cache folder to write: new files make their tables as Optuna does
    return storage


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


def check_sampler(name: str | None, search_space: dict[str, list[Any]] | None = None) -> None:
    """Raise a one-line ``UsageError`` when sampler NAME cannot be built here: an unknown name,
    a module its extra installs that is missing, or ``grid`` without a search space."""
    if name is None:
        return
    name = name.lower()
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    modules, extra = SAMPLER_NEEDS.get(name, ((), ""))
    missing = [m for m in modules if not module_installed(m)]
    if missing:
        raise UsageError(f"sampler {name!r} needs {' and '.join(missing)}: "
                         f"pip install 'tunefleet[{extra}]'")
    if name == "grid" and not search_space:
        raise UsageError("sampler 'grid' needs a search space: --search-space FILE (JSON or "
                         'YAML mapping each parameter to its values, e.g. {"x": [0, 1, 2]})')


def load_search_space(path: str) -> dict[str, list[Any]]:
    """The grid of ``--search-space FILE``: a JSON or YAML mapping from each parameter name to
    the list of its values (numbers, strings, booleans or null), as ``GridSampler`` takes it."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"--search-space {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml  # one of Optuna's own dependencies; YAML is a superset of JSON

            data = yaml.safe_load(text)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--search-space {path}: not valid JSON/YAML: {first}") from None
    return check_search_space(data, f"--search-space {path}")


def check_search_space(data: Any, where: str = "search space") -> dict[str, list[Any]]:
    """``data`` as a grid, or a one-line error saying what is wrong with it."""
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{where}: must map each parameter name to a list of values, "
                         'e.g. {"x": [0, 1, 2], "opt": ["adam", "sgd"]}')
    for key, values in data.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}: parameter {key!r} needs a non-empty list of values")
        for v in values:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise UsageError(f"{where}: parameter {key!r} has a value of type "
                                 f"{type(v).__name__}; use numbers, strings, booleans or null")
    return {str(k): list(v) for k, v in data.items()}


class _StopOnlyInOptimize:
    """Grid and brute-force samplers call ``study.stop()`` once the space is exhausted, which
    Optuna allows only inside ``Study.optimize``; storage workers and peers tell their trials
    outside it. There an exhausted space stops nothing: the trial budget ends the run."""

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        try:
            super().after_trial(study, trial, state, values)  # type: ignore[misc]
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise


class GridSampler(_StopOnlyInOptimize, optuna.samplers.GridSampler):
    """Optuna's GridSampler, usable outside ``Study.optimize`` (see ``_StopOnlyInOptimize``)."""


class BruteForceSampler(_StopOnlyInOptimize, optuna.samplers.BruteForceSampler):
    """Optuna's BruteForceSampler, usable outside ``Study.optimize``."""


def build_sampler(name: str | None, seed: int | None = None, n_objectives: int = 1,
                  search_space: dict[str, list[Any]] | None = None
                  ) -> optuna.samplers.BaseSampler:
    """The sampler called NAME (one of SAMPLERS); None picks Optuna's default for the study.
    ``search_space`` is the grid of ``grid``."""
    if name is None:
        name = "nsga2" if n_objectives > 1 else "tpe"
    name = name.lower()
    check_sampler(name, search_space)
    try:
        # QMC, GP, BruteForce are "experimental" in Optuna: nothing a user can act on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if name == "tpe":  # Optuna's algorithm, without its cost per trial in the study
                from tunefleet.samplers import TPESampler

                return TPESampler(seed=seed)
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
            if name == "grid":
                return GridSampler(search_space, seed=seed)
            if name == "bruteforce":
                return BruteForceSampler(seed=seed)
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
    #: the grid of the ``grid`` sampler (recorded, so that workers that join build the same)
    search_space: dict[str, list[Any]] | None = None

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        if data["search_space"] is None:  # specs without a grid read the same as before
            del data["search_space"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudySpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


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

    The spec is recorded in the study's system attributes the first time; when the study exists,
    what the caller does not give (sampler, seed, pruner, grid) is taken from the recorded spec,
    so every worker of a study builds the same sampler and pruner, and ``--seed`` alone does not
    swap a recorded grid for TPE.
    """
    spec = spec or StudySpec()
    directions = _check_directions(spec.directions)
    check_sampler(spec.sampler, spec.search_space)  # before the storage is touched
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
        if recorded:  # what the caller leaves out is what the study was made with
            old = StudySpec.from_json(recorded)
            same_sampler = spec.sampler is None or spec.sampler == old.sampler
            spec = StudySpec(
                directions=have,
                sampler=spec.sampler if spec.sampler is not None else old.sampler,
                seed=spec.seed if spec.seed is not None else old.seed,
                pruner=spec.pruner if spec.pruner is not None else old.pruner,
                search_space=(spec.search_space if spec.search_space is not None
                              else old.search_space if same_sampler else None))
        directions = have
    sampler = build_sampler(spec.sampler, spec.seed, len(directions), spec.search_space)
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
    """Load an existing study, with a one-line error listing the studies there when it is absent.
    A SQLite or journal file that does not exist is an error: reading never creates one."""
    store = open_storage(storage, create=False)
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
            f"no study {study_name!r} in {shown_url(storage or DEFAULT_STORAGE)}; "
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
