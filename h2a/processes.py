"""Is a process still there, and is it still the one we started? Shared by the tensor
cache (stale temp dirs), the runs table (a 'running' run whose process is gone is
'stopped') and the job controls (stop and cancel signal only the process they started).

A PID alone names a process only while it lives: after a crash the number is reused, so a
job record also keeps the process's start time (``/proc/PID/stat`` field 22, clock ticks
since boot) and its process group; both must still match before anything is signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass

# Background work (analysis jobs, the pages' evaluations) runs at this nice value so it
# yields the CPU to the pages users are looking at: on 2 cores a revisit during an unniced
# evaluation took 2.00x its quiet time, 1.10x niced (bench/bench_busy_pages.py).
BACKGROUND_NICE = 10


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (finished, not yet reaped by its parent) is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return not fields or fields[0] != "Z"  # unreadable stat: trust kill(0)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from field 3 (state) on; the command name may hold spaces and ')'."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when gone or unknown)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of stat(5)
    except (IndexError, ValueError):
        return None


def lower_priority(nice: int = BACKGROUND_NICE, *, thread_only: bool = False) -> bool:
    """Raise the calling process's (or, on Linux, only the calling thread's) nice value
    by ``nice``; False where it cannot (not Linux for a thread, or not permitted).

    Linux schedules threads as tasks, so ``setpriority`` on the thread's native id nices
    that thread alone, and the threads it starts later (PyTorch's OpenMP team for this
    thread) inherit it. Elsewhere a thread's id is not a PID: the call is skipped."""
    try:
        if not thread_only:
            os.nice(nice)
        elif sys.platform.startswith("linux"):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        else:
            return False
    except OSError:
        return False
    return True


def host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class ProcessId:
    """A process as a job record names it: the PID is not enough once it can be reused."""

    pid: int
    start: int | None  # start_time() when recorded; None for records older than this rule
    pgid: int | None = None
    host: str | None = None

    @classmethod
    def of(cls, pid: int, pgid: int | None = None) -> ProcessId:
        return cls(pid=pid, start=start_time(pid), pgid=pgid, host=host())

    @classmethod
    def from_record(cls, rec: dict, pid_key: str = "pid") -> ProcessId | None:
        """From a job.json / progress.json dict; None when it names no PID."""
        try:
            pid = int(rec[pid_key])
        except (KeyError, TypeError, ValueError):
            return None
        start, pgid = rec.get("pid_start"), rec.get("pgid")
        return cls(pid=pid, start=int(start) if start is not None else None,
                   pgid=int(pgid) if pgid is not None else None, host=rec.get("host"))

    def record(self) -> dict:
        return {"pid": self.pid, "pid_start": self.start, "pgid": self.pgid, "host": self.host}

    def terminate_group(self) -> bool:
        """SIGTERM the recorded process group, only while this is still the recorded process
        (PID, start time and group all match); False when it is not, or is gone."""
        if self.pgid is None or not self.verified():
            return False
        try:
            os.killpg(self.pgid, signal.SIGTERM)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def elsewhere(self) -> bool:
        """Recorded on another machine (a shared models folder): nothing here can be checked."""
        return bool(self.host) and self.host != host()

    def alive(self) -> bool:
        """Running on this machine and still the same process (same start time)."""
        if self.elsewhere() or not pid_alive(self.pid):
            return False
        return self.start is None or start_time(self.pid) == self.start

    def verified(self) -> bool:
        """Safe to signal: alive with a recorded start time and process group that both match."""
        if self.start is None or self.pgid is None or not self.alive():
            return False
        try:
            return os.getpgid(self.pid) == self.pgid
        except OSError:
            return False
