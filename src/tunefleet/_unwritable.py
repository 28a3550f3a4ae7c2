"""A storage that can no longer be written (its disk is full, its file system read-only, its file
not ours to write): not a bug of tunefleet's nor of the objective, so the command line ends such
a run with one line that says what to do, not with a traceback through the database driver."""

from __future__ import annotations

import errno

from tunefleet._outage import exception_chain

#: errno -> (the cause, what to do); the database drivers' messages below say the same.
_ERRNOS = {
    errno.ENOSPC: ("its disk is full", "free some space on it (or move the file to a bigger "
                                       "disk)"),
    errno.EDQUOT: ("its disk quota is used up", "free some space (or raise the quota)"),
    errno.EROFS: ("its file system is read-only", "make it writable (or move the file)"),
    errno.EACCES: ("permission denied", "give this user write permission on the file and its "
                                        "folder"),
    errno.EPERM: ("permission denied", "give this user write permission on the file and its "
                                       "folder"),
}

#: words of SQLite's, PostgreSQL's and MySQL's messages (lower case) -> the errno they mean
_MESSAGES = (
    ("database or disk is full", errno.ENOSPC),
    ("no space left on device", errno.ENOSPC),
    ("could not extend file", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("read-only file system", errno.EROFS),
    ("attempt to write a readonly database", errno.EACCES),
    ("permission denied", errno.EACCES),
)


def unwritable_cause(exc: BaseException) -> tuple[str, str] | None:
    """(the cause, what to do) when ``exc`` or an exception it came from says that the storage
    cannot be written; None for anything else (a bug must keep its traceback)."""
    for e in exception_chain(exc):
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            return _ERRNOS[e.errno]
        text = str(e).lower()
        for words, code in _MESSAGES:
            if words in text:
                return _ERRNOS[code]
    return None
