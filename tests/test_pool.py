"""The data layer's one process pool (h2a.data.pool): results, cancellation, a dead worker's
exit code and stderr, and the reason it is not ProcessPoolExecutor (a stdin script)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from h2a.data.pool import WorkerError, run_tasks
from tests.conftest import REPO


# Task functions: workers import this module by name, so they live at its top level.
def _square_pid(x: int) -> list[int]:
    return [x * x, os.getpid()]


def _record_then_sleep(task: list) -> None:
    folder, seconds = task
    Path(folder, str(os.getpid())).touch()
    time.sleep(seconds)


def _die(_task: object) -> None:
    sys.stderr.write("reading broken.png failed: boom\n")
    sys.stderr.flush()
    os._exit(3)


@pytest.fixture(autouse=True)
def importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers start in a fresh interpreter: let them import ``tests.test_pool``."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_results_come_back_from_several_workers() -> None:
    results: list[list[int]] = []
    run_tasks("tests.test_pool:_square_pid", list(range(8)), 2, results.append)
    assert sorted(r[0] for r in results) == [x * x for x in range(8)]
    assert len({r[1] for r in results}) == 2 and os.getpid() not in {r[1] for r in results}


def test_one_worker_runs_in_this_process() -> None:
    results: list[list[int]] = []
    run_tasks("tests.test_pool:_square_pid", [3, 4], 1, results.append)
    assert results == [[9, os.getpid()], [16, os.getpid()]]


def test_an_exception_in_on_result_kills_the_workers(tmp_path: Path) -> None:
    """A cancel (progress raising) must not leave workers writing behind the caller."""

    class Cancelled(Exception):
        pass

    def on_result(_result: object) -> None:
        raise Cancelled

    tasks = [[str(tmp_path), 0]] + [[str(tmp_path), 60]] * 3  # one quick task, then long ones
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        run_tasks("tests.test_pool:_record_then_sleep", tasks, 2, on_result)
    assert time.monotonic() - t0 < 30  # did not wait for the sleeping tasks
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped, not a zombie


def test_a_dead_worker_says_its_exit_code_and_stderr() -> None:
    with pytest.raises(WorkerError) as info:
        run_tasks("tests.test_pool:_die", [1, 2, 3], 2, lambda r: None, what="A test worker")
    err = info.value
    assert err.code == 3 and any("broken.png" in line for line in err.tail)
    assert str(err).startswith("A test worker stopped unexpectedly (exit code 3):")


def test_works_from_a_stdin_script(tmp_path: Path) -> None:
    """ProcessPoolExecutor's spawn/forkserver workers re-run ``__main__`` and break here."""
    script = ("from h2a.data.pool import run_tasks\n"
              "out = []\n"
              "run_tasks('tests.test_pool:_square_pid', [1, 2, 3], 2, out.append)\n"
              "print(sorted(r[0] for r in out))\n")
    proc = subprocess.run([sys.executable, "-"], input=script, text=True, capture_output=True,
                          cwd=tmp_path, env=os.environ.copy(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 4, 9]"
