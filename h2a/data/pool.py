"""One process pool for the data layer: the tensor-cache build and the demo generator.

WHY not ``concurrent.futures.ProcessPoolExecutor``: none of its start methods fits a
library that runs inside Streamlit, notebooks and stdin scripts (checked on 3.11):

- fork copies a threaded parent (Streamlit's server, torch's pools); OpenCV in the
  child can then deadlock on a lock some other thread held at the fork.
- spawn and forkserver re-run the caller's ``__main__`` in every worker: an unguarded
  script starts itself again, and under ``python - < script`` the pool breaks at once
  (``BrokenProcessPool``), since there is no file to re-run.
- a worker that dies (SIGBUS from a memmap on a full disk, the OOM killer) only gives
  ``BrokenProcessPool``: no exit code and no stderr to say why, and on 3.11 running
  workers cannot be stopped on cancel without private attributes, so they would keep
  writing into a temp folder the caller is about to remove.

So workers here are fresh ``python -c`` interpreters that import only the module of the
task function: tasks go one JSON line per task over stdin, results come back one JSON
line each over a private copy of stdout. The shape follows the executor's: a task
function and an optional initializer, both named ``"module:function"``.

Workers die with the process that started them: after a ``kill -9`` of the parent (a
closed terminal, an OOM kill, a killed Streamlit server) orphaned workers would keep
writing into a temp folder that the next run is about to remove, racing its cleanup. On
Linux the kernel sends them SIGKILL when the parent dies (``PR_SET_PDEATHSIG``);
elsewhere they stop at their next write to the closed pipe.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Sequence

PARENT_ENV = "H2A_WORKER_PARENT"  # the starting process's PID, set in the worker's environment
IN_FLIGHT = 2  # tasks queued per worker, so none idles while its next task is sent
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 15


class WorkerError(RuntimeError):
    """A worker process stopped before it answered every task.

    ``code`` is its exit status (negative: killed by that signal), ``tail`` the last
    lines of its stderr (the traceback names the file it was working on), so callers
    can say why (a full disk, for one).
    """

    def __init__(self, what: str, code: int | None, tail: list[str]) -> None:
        super().__init__(f"{what} stopped unexpectedly (exit code {code}):\n" + "\n".join(tail))
        self.code = code
        self.tail = tail


def worker_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a worker started by this process: one BLAS/OpenMP thread each
    (the pool's worker count is the parallelism), and this PID for ``die_with_parent``."""
    out = dict(os.environ if env is None else env)
    out[PARENT_ENV] = str(os.getpid())
    for var in _THREAD_VARS:
        out[var] = "1"
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


def resolve(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function, looked up when called (so a test's
    monkeypatch of the module attribute applies to the in-process path too)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def worker_code(target: str, initializer: str | None = None) -> str:
    """The ``python -c`` program of a worker running ``target`` on each task."""
    return f"from h2a.data.pool import serve; serve({target!r}, {initializer!r})"


def serve(target: str, initializer: str | None = None) -> None:
    """A worker's loop: one JSON task per stdin line, one JSON result per line.

    Results go to a private copy of stdout; fd 1 then points at stderr, so whatever a
    library prints cannot corrupt the protocol. An exception ends the worker with its
    traceback on stderr, which the parent quotes.
    """
    die_with_parent()
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if initializer:
        resolve(initializer)()
    fn = resolve(target)
    for line in sys.stdin:
        if line.strip():
            proto.write(json.dumps(fn(json.loads(line))) + "\n")
            proto.flush()


def run_tasks(target: str, tasks: Sequence[Any], workers: int, on_result: Callable[[Any], None], *,
              initializer: str | None = None, what: str = "A worker process",
              program: str | None = None) -> None:
    """Call ``target(task)`` for every task and ``on_result(result)`` in the caller's thread
    as each one finishes (in any order when ``workers`` > 1).

    One worker (or one task) runs in this process: no start-up cost, and tests can
    monkeypatch the target. Otherwise ``min(workers, len(tasks))`` subprocesses run it,
    each calling ``initializer`` once first (never in this process: it may set process
    globals such as OpenCV's thread count). Tasks and results pass through JSON (tuples
    come back as lists). Any exception here, ``on_result``'s included (a cancel), kills
    the workers before it propagates. ``what`` opens the error message of a worker that
    died ("An image preprocessing worker"); ``program`` replaces the worker's
    ``python -c`` code (tests start broken workers).
    """
    if workers <= 1 or len(tasks) <= 1:
        fn = resolve(target)
        for task in tasks:
            on_result(fn(task))
        return
    code = program if program is not None else worker_code(target, initializer)
    with _Pool(code, min(workers, len(tasks)), what) as pool:
        pool.run(list(tasks), on_result)


@dataclass
class _Worker:
    proc: subprocess.Popen
    errfile: IO[bytes]
    buffer: bytes = b""


@dataclass
class _Pool:
    """Subprocess workers fed over pipes; a context manager that always reaps them."""

    code: str
    size: int
    what: str
    workers: list[_Worker] = field(default_factory=list)
    queue: list[Any] = field(default_factory=list)
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    def __enter__(self) -> _Pool:
        env = worker_env()
        try:
            for _ in range(self.size):
                errfile = tempfile.TemporaryFile()
                try:
                    proc = subprocess.Popen([sys.executable, "-c", self.code], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errfile, env=env)
                except BaseException:
                    errfile.close()
                    raise
                worker = _Worker(proc, errfile)
                self.workers.append(worker)
                self.sel.register(proc.stdout, selectors.EVENT_READ, worker)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, tasks: list[Any], on_result: Callable[[Any], None]) -> None:
        self.queue = list(reversed(tasks))
        remaining = len(tasks)
        for worker in self.workers:
            for _ in range(IN_FLIGHT):
                self._send(worker)
        while remaining:
            for key, _ in self.sel.select():
                for result in self._read(key.data):
                    on_result(result)
                    remaining -= 1
                    self._send(key.data)
        for worker in self.workers:
            worker.proc.stdin.close()
        for worker in self.workers:
            if worker.proc.wait(timeout=30) != 0:
                raise self._failure(worker)

    def _send(self, worker: _Worker) -> None:
        if self.queue:
            try:
                worker.proc.stdin.write((json.dumps(self.queue.pop()) + "\n").encode())
                worker.proc.stdin.flush()
            except BrokenPipeError:
                raise self._failure(worker) from None

    def _read(self, worker: _Worker) -> list[Any]:
        """The results that arrived whole from ``worker``; EOF means it died."""
        data = os.read(worker.proc.stdout.fileno(), 1 << 16)
        if not data:
            raise self._failure(worker)
        *lines, worker.buffer = (worker.buffer + data).split(b"\n")
        return [json.loads(line) for line in lines]

    def _failure(self, worker: _Worker) -> WorkerError:
        code = worker.proc.wait()
        worker.errfile.seek(0)
        tail = worker.errfile.read().decode(errors="replace").strip().splitlines()[-_TAIL_LINES:]
        return WorkerError(self.what, code, tail)

    def __exit__(self, *exc: object) -> None:
        self.sel.close()
        for worker in self.workers:
            proc = worker.proc
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            worker.errfile.close()


__all__ = ["WorkerError", "run_tasks", "serve", "worker_code", "worker_env", "die_with_parent"]
