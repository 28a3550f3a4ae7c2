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
    from tunefleet._children import end_children, own_children
    from tunefleet.backends._processes import THREADS_VAR, _own_group
    from tunefleet.hub import limit_threads, serve
    from tunefleet.transport import PipeChannel

    _own_group()
    own_children()
    if THREADS_VAR in os.environ:
        limit_threads(int(os.environ[THREADS_VAR]))
    code = serve(PipeChannel(Connection(fd), parent_pid))
    end_children(services=False)  # what the objective left running; services once their
    import atexit                 # libraries' exit handlers said goodbye to them

    atexit._run_exitfuncs()
    end_children()
    return code


if __name__ == "__main__":
    sys.exit(main())
