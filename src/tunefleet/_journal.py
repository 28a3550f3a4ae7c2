"""A journal file whose last record was cut (a crash or a full disk in the middle of an append)
or ends in garbage stays readable and writable.

Optuna reads such a file, but its next append lands after the torn bytes and makes the study
unreadable from then on. Before a journal is opened, its tail is checked; torn bytes are moved
to a file beside it (``NAME.torn-TIME``) and the journal is cut after its last whole record,
under the journal's own lock, so that no append in progress is taken for a torn one. Only the
tail is repaired: a damaged record in the middle is reported, not removed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, BinaryIO

from tunefleet._optuna import journal_lock_held

_logger = logging.getLogger("tunefleet")

#: How far from the end torn records are looked for.
_TAIL = 1 << 20


def _whole_end(f: BinaryIO, size: int) -> int:
    """The offset just after the last whole, readable record of the file's tail."""
    start = max(0, size - _TAIL)
    f.seek(start)
    tail = f.read()
    end = len(tail)
    while end > 0:
        if tail[end - 1:end] != b"\n":  # an unfinished last line
            cut = tail.rfind(b"\n", 0, end)
            end = cut + 1 if cut >= 0 else 0
            continue
        line_start = tail.rfind(b"\n", 0, end - 1) + 1
        line = tail[line_start:end - 1]
        if line_start == 0 and start > 0:
            break  # the line begins before the window: leave it alone
        try:
            json.loads(line)
            break
        except ValueError:  # garbage, or bytes that are not UTF-8
            end = line_start
    return start + end


def repair_tail(path: str, lock: Any) -> str | None:
    """Set a torn tail of the journal at ``path`` aside (see the module docstring); return the
    one line that says what was done, or None when the file is whole."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    if size == 0:
        return None
    with open(path, "rb") as f:
        if _whole_end(f, size) == size:
            return None  # the common case: a whole file, checked without the lock
    with journal_lock_held(lock):
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            keep = _whole_end(f, size)
            if keep == size:
                return None
            f.seek(keep)
            torn = f.read()
            aside = f"{path}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            with open(aside, "wb") as out:
                out.write(torn)
                out.flush()
                os.fsync(out.fileno())
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    message = (f"tunefleet: journal {path}: its last {len(torn)} byte(s) were not a whole "
               f"record (a crash or a full disk during a write); set aside in {aside}")
    _logger.warning(message)
    return message
