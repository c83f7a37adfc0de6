"""Worker subprocesses die with the process that started them.

WHY: the cache builder and the demo generator run plain ``python -c`` workers. After a
``kill -9`` of the parent (a closed terminal, an OOM kill, a killed Streamlit server)
orphaned workers would keep writing into a temp folder that the next run is about to
remove, racing its cleanup. On Linux the kernel can send them SIGKILL when the parent
dies (``PR_SET_PDEATHSIG``); elsewhere they stop at their next write to the closed pipe.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "H2A_WORKER_PARENT"  # the starting process's PID, set in the worker's environment
_PR_SET_PDEATHSIG = 1


def worker_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a worker started by this process."""
    out = dict(os.environ if env is None else env)
    out[PARENT_ENV] = str(os.getpid())
    return out


def die_with_parent() -> None:
    """Call first thing in a worker: exit now if the parent is already gone, and be
    killed by the kernel when it goes later."""
    parent = os.environ.get(PARENT_ENV)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if parent and parent.isdigit() and os.getppid() != int(parent):
        os._exit(0)  # the parent died before the signal was armed
