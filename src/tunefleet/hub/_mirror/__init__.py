"""An in-memory study written to its durable storage by group commit, for the hub's coordinator.

In hub mode the coordinator is the only writer of the study, so it may serve every read from an
:class:`~optuna.storages.InMemoryStorage` (samplers such as TPE read all trials for each new
trial; on a database those reads used to bound the hub's speed) and let one background thread
write the changes to the durable storage (SQLite, PostgreSQL, MySQL, a journal file).

The thread writes by *group commit*: each round takes every trial and study attribute that
changed since the last round and writes them in one transaction (one journal append), as the
difference between what memory holds now and what the durable storage already has. A trial that
started and finished between two rounds is written once, whole. Every change made to memory gets
a sequence number (:attr:`MirroredStorage.seq`); :attr:`MirroredStorage.durable_seq` is the
highest one the durable storage is known to hold. The coordinator counts a trial as finished
(progress bar, callbacks, best value) only once ``durable_seq`` has passed the change that
finished it, so a crash of the coordinator never loses a trial that was shown or counted, and it
holds back new trials while :meth:`MirroredStorage.lag` says the storage is behind.

What lands in the durable storage is an ordinary Optuna study (numbers, states, params,
distributions, values, intermediate values, attributes, datetimes as ``study.optimize`` writes
them; start and completion times are memory's). Databases are written through Optuna's own table
definitions; the journal through the same log records ``JournalStorage`` appends. A durable write
that fails stops the mirroring (the two would no longer match): the error is logged once and
raised by every later ``flush()`` and ``close()`` as :class:`~tunefleet.errors.MirrorError`.

The parts: ``_rounds`` (what a round holds), ``_writer`` (any storage, one call per change),
``_rdb`` and ``_journal`` (one transaction or one append per round), ``_commit`` (the writer
thread, flush and close) and ``_storage`` (Optuna's storage interface on memory).
"""

from tunefleet.hub._mirror._storage import MirroredStorage, mirrored_study

__all__ = ["MirroredStorage", "mirrored_study"]
