"""One writer per run folder: an exclusive ``flock`` on ``RUN/.lock`` for a training's life.

``flock`` (not POSIX ``lockf``) because its lock belongs to the open file, not to the
process: two threads of the app conflict like two processes do, and a lock handed to a
child through an inherited descriptor stays held by the child after the parent closes
its copy. The kernel drops it when the holder dies, even by ``kill -9``, so a crashed
run never leaves a stale lock; the file itself stays (deleting lock files races).

The lock file also says who holds it (PID, host, start time), so a refused writer can
name the holder. The app takes the lock before it starts a background job and hands it
over: the child inherits the descriptor and adopts the lock when the record carries the
token the app put in its environment and names it (or, under torchrun, its launcher) as
the job. There is no moment in which a second start could slip in.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path

from h2a.engine.config import TrainingError
from h2a.processes import host

LOCK = ".lock"
TOKEN_ENV = "H2A_RUN_LOCK_TOKEN"  # set by the app for the job it starts (see ``hand_over``)
ADOPT_WAIT_S = 60.0  # how long a started job waits for the app to finish handing over


class RunLocked(TrainingError):
    """Another writer holds the run folder."""

    def __init__(self, run_dir: Path, holder: dict | None) -> None:
        self.run_dir = Path(run_dir)
        self.holder = holder or {}
        super().__init__(f"{self.run_dir} is in use by another training ({describe_holder(self.holder)}); "
                         "wait for it to end or stop it, or choose another run folder")


def describe_holder(holder: dict) -> str:
    """'pid 123 on host gpu1 since 2026-11-30 23:59:01 UTC' from a lock record."""
    if not holder:
        return "holder unknown"
    pid = holder.get("job_pid") or holder.get("pid")
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    return f"pid {pid} on host {holder.get('host', '?')} since {when}"


def read_holder(run_dir: Path) -> dict:
    """The lock file's record (empty when missing, never written, or mid-write)."""
    try:
        rec = json.loads((Path(run_dir) / LOCK).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


class RunLock:
    """The exclusive lock of one run folder; a context manager (``with RunLock(d):``).

    ``acquire`` never waits for another writer: it takes the lock, adopts one the app
    handed to this process, or raises ``RunLocked`` naming the holder.
    """

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.fd: int | None = None
        self.adopted = False
        self.record: dict = {}

    @property
    def held(self) -> bool:
        return self.fd is not None or self.adopted

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if self._adopt():
                return self
            raise RunLocked(self.run_dir, read_holder(self.run_dir)) from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.record = {"pid": os.getpid(), "host": host(), "since": time.time()}
        self._write()
        return self

    def _adopt(self) -> bool:
        """True when the app holds this lock for this very process (see the module docstring)."""
        token = os.environ.get(TOKEN_ENV)
        if not token:
            return False
        mine = (os.getpid(), os.getppid())  # the job itself, or torchrun's rank under its launcher
        deadline = time.monotonic() + ADOPT_WAIT_S
        while True:
            rec = read_holder(self.run_dir)  # {} while the app rewrites it: look again
            if rec and rec.get("token") != token:
                return False
            if rec.get("job_pid") in mine:
                self.adopted, self.record = True, rec
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def hand_over(self, job_pid: int) -> None:
        """Name ``job_pid`` (started with ``pass_fds=[self.fd]`` and ``self.token()``) as the holder."""
        self.record["job_pid"] = job_pid
        self._write()

    def token(self) -> dict[str, str]:
        """Environment for a child that is to adopt this lock."""
        self.record.setdefault("token", secrets.token_hex(16))
        self._write()
        return {TOKEN_ENV: self.record["token"]}

    def _write(self) -> None:
        """The holder record, in place: the file is ours while we hold the lock."""
        data = json.dumps(self.record).encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def release(self) -> None:
        """Drop this process's hold (a child that inherited the descriptor keeps the lock)."""
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor of the open file unlocks it
            self.fd = None
        self.adopted = False

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
