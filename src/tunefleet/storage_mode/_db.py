"""Open a storage the way a fleet of workers needs it, and create a study once (``init``)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import optuna

from tunefleet import _attrs as attrs
from tunefleet.errors import UsageError
from tunefleet.storage_mode._backoff import is_schema_race, with_backoff
from tunefleet.storage_mode._patient import wait_out_outages
from tunefleet._studies import (SPEC_ATTR, StudySpec, _find_study, create_or_load_study,
                               open_storage)

#: Seconds SQLite itself waits for the write lock before it reports "database is locked".
SQLITE_BUSY_TIMEOUT = 60


def is_rdb_url(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "postgres", "mysql",
                                                     "mariadb")


def with_sqlite_timeout(url: str) -> str:
    """Add SQLite's busy timeout to a ``sqlite:///`` URL (kept when the URL already sets one):
    with many writers, waiting for the lock beats failing at Python's default of 5 seconds."""
    if not url.startswith("sqlite:///"):
        return url
    query = dict(parse_qsl(urlsplit(url).query))
    if "timeout" in query:
        return url
    return f"{url}{'&' if '?' in url else '?'}timeout={SQLITE_BUSY_TIMEOUT}"


def open_worker_storage(url: str | None, *, heartbeat_interval: int | None = None,
                        grace_period: int | None = None,
                        storage_timeout: float | None = None) -> optuna.storages.BaseStorage:
    """The storage for a worker: SQLite with a long busy timeout, databases with Optuna's own
    heartbeat table when HEARTBEAT_INTERVAL is set (journal files get tunefleet's heartbeat,
    see :mod:`.heartbeat`). With STORAGE_TIMEOUT, a database that is away (now, or during any
    later call) is waited for that many seconds (:mod:`.patient`); without it (``tunefleet
    init``) it is an error at once, as a storage that cannot be opened.

    Workers started together on a fresh database all create its tables at once, and all but
    one lose that race ("table trials already exists" on SQLite, a duplicate pg_type row on
    PostgreSQL, error 1050 on MySQL). Every step of Optuna's set-up checks before it writes, so
    the losers simply open the storage again, with back-off, and find the tables made. This
    holds across nodes, which a file lock would not (journal files have no tables to race on).
    """
    from tunefleet._studies import DEFAULT_STORAGE

    url = url or DEFAULT_STORAGE
    if url.startswith("sqlite:///"):
        url = with_sqlite_timeout(url)
    if is_rdb_url(url) and heartbeat_interval is not None:
        # A worker cut off in the middle of a write must not hold its locks past the grace
        # period: the others then fail its trial (an UPDATE of its heartbeat locks the trial's
        # row against their SELECT ... FOR UPDATE).
        limit = float(grace_period) if grace_period else None
        store = with_backoff(lambda: open_storage(url, heartbeat_interval=heartbeat_interval,
                                                  grace_period=grace_period,
                                                  idle_transaction_limit=limit),
                             what="open storage", retry_if=is_schema_race, max_wait=120,
                             outage_wait=storage_timeout)
    else:
        store = with_backoff(lambda: open_storage(url), what="open storage",
                             retry_if=is_schema_race, max_wait=120, outage_wait=storage_timeout)
    return store if storage_timeout is None else wait_out_outages(store, storage_timeout)


def init_study(url: str | None, study_name: str | None, spec: StudySpec,
               *, explicit: bool, directions_given: bool = True) -> tuple[optuna.Study, bool]:
    """Create the study with SPEC, or check an existing one against it; return (study, created).

    EXPLICIT says the caller named a sampler, seed or pruner: an existing study recorded with
    other settings is then refused, so that no worker silently runs a different sampler.
    DIRECTIONS_GIVEN False accepts the directions the study has.
    """
    store = open_worker_storage(url)
    name = study_name or "tunefleet"
    existing = with_backoff(lambda: _find_study(store, name), what="read studies")
    if existing is not None and explicit:
        recorded = existing.system_attrs.get(SPEC_ATTR)
        if recorded:
            have = StudySpec.from_json(recorded)
            mine = (spec.sampler, spec.seed, spec.pruner)
            if (have.sampler, have.seed, have.pruner) != mine:
                raise UsageError(
                    f"study {name!r} exists with sampler {have.sampler or 'default'}, seed "
                    f"{have.seed}, pruner {have.pruner or 'default'}; it keeps them: drop those "
                    "options or use another --study"
                )
    study = with_backoff(lambda: create_or_load_study(store, name, spec,
                                                      directions_given=directions_given),
                         what="create study")
    if existing is None:
        with_backoff(lambda: study._storage.set_study_system_attr(study._study_id, attrs.MODE,
                                                                  "storage"), what="mark study")
    return study, existing is None
