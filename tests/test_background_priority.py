"""Background work runs niced so the pages users are looking at keep the CPU: a thread
lowered with ``lower_priority`` and the threads it starts, and the pages' evaluation worker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from h2a.processes import BACKGROUND_NICE, lower_priority
from tests.browser import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(30)
    return out[0]


def test_a_niced_thread_and_the_threads_it_starts_yield_but_the_process_does_not() -> None:
    base = _nice()

    def work() -> tuple[bool, int, int]:
        ok = lower_priority(thread_only=True)
        return ok, _nice(), _in_thread(_nice)  # a thread it starts (PyTorch's team, a loader) inherits

    ok, mine, child = _in_thread(work)
    assert ok
    assert mine == child == min(19, base + BACKGROUND_NICE)
    assert _nice() == base  # the server's own threads keep their priority


def test_the_pages_evaluation_worker_is_niced_and_runs_calls_in_order() -> None:
    from h2a.app.runs_ui import _Worker

    worker = _Worker("h2a-eval-test")
    order: list[int] = []
    futures = [worker.submit(order.append, i) for i in range(3)]
    assert worker.submit(_nice).result(timeout=30) == min(19, _nice() + BACKGROUND_NICE)
    assert [f.done() for f in futures] == [True] * 3 and order == [0, 1, 2]
    with pytest.raises(ZeroDivisionError):  # a failure reaches whoever waits, and the worker goes on
        worker.submit(lambda: 1 / 0).result(timeout=30)
    assert worker.submit(lambda: "still here").result(timeout=30) == "still here"


def test_a_server_stopped_during_an_evaluation_exits_at_once() -> None:
    # ThreadPoolExecutor joined its worker at exit: a stopped server waited for the evaluation.
    code = ("import time\n"
            "from h2a.app.runs_ui import _Worker\n"
            "w = _Worker('h2a-eval')\n"
            "w.submit(time.sleep, 600)\n"
            "time.sleep(0.5)\n"
            "print('exiting', flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "exiting", out.stderr
