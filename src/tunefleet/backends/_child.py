"""Entry point of a worker started as a fresh interpreter (``start_method="spawn"``).

``python -m tunefleet.backends._child FD PARENT_PID``: FD is this process's end of a socket
pair with the coordinator. Unlike multiprocessing's spawn, nothing of the user's ``__main__``
runs again here: the objective arrives by cloudpickle with the worker's configuration. The
thread limits arrive in the environment, before any pool exists.
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing.connection import Connection


def main() -> int:
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    from tunefleet.backends._processes import THREADS_VAR
    from tunefleet.hub import limit_threads, serve
    from tunefleet.transport import PipeChannel

    if THREADS_VAR in os.environ:
        limit_threads(int(os.environ[THREADS_VAR]))
    return serve(PipeChannel(Connection(fd), parent_pid))


if __name__ == "__main__":
    sys.exit(main())
