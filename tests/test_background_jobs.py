"""Background analysis jobs (h2a.analysis.background): one process per key however many ask,
cancel, a killed job shows 'stopped' and starts again only when asked, failures named in one
line, signals only for the recorded process, and a finished clusters job reused as it is
(its embeddings computed once for every k).

The machinery is exercised with the 'selftest' kind (counts steps; no model), the result
reuse with the real 'clusters' kind on the demo data at 64 px."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from h2a.analysis.background import (
    FINAL,
    Job,
    JobSpec,
    cancel,
    force_stop,
    list_jobs,
    request_cancel,
    start_job,
)
from h2a.processes import BACKGROUND_NICE, ProcessId
from tests.conftest import run_cli

WAIT_S = 600  # generous: the worker imports torch on a loaded 2-core machine


def wait_until(job: Job, pred, what: str, timeout: float = WAIT_S) -> dict:
    """Poll the job's status until ``pred(status)``; fail naming ``what`` with the log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job.status()
        if pred(st):
            return st
        time.sleep(0.2)
    raise AssertionError(f"{job.name}: no {what} after {timeout} s; status {job.status()}\n{job.log_tail()}")


def running(job: Job) -> dict:
    return wait_until(job, lambda s: s.get("status") == "running" and (s.get("done") or 0) >= 1, "progress")


def finished(job: Job) -> dict:
    return wait_until(job, lambda s: s.get("status") in FINAL, "end")


def gone(job: Job, timeout: float = WAIT_S) -> None:
    """Wait until the process job.json names has ended."""
    proc = ProcessId.from_record(json.loads((job.dir / "job.json").read_text()))
    deadline = time.monotonic() + timeout
    while proc.alive() or not lock_free(job):
        assert time.monotonic() < deadline, f"{job.name}: pid {proc.pid} still running after {timeout} s"
        time.sleep(0.2)


def lock_free(job: Job) -> bool:
    """The job folder's lock is free: its worker has let go of it (it does so only when it exits)."""
    from h2a.engine.lock import RunLock, RunLocked

    try:
        with RunLock(job.dir):
            return True
    except RunLocked:
        return False


def launches(job: Job) -> int:
    """How many worker processes were ever launched for this job (one '$ cmd' line each)."""
    return sum(1 for line in (job.dir / "log.txt").read_text().splitlines() if line.startswith("$ "))


def recorded_pid(job: Job) -> int:
    return json.loads((job.dir / "job.json").read_text())["pid"]


def selftest(tag: str, **params) -> JobSpec:
    return JobSpec("selftest", {"tag": tag, "steps": 100_000, "step_s": 0.05, **params})


def cancel_live_jobs(wait_s: float) -> None:
    """No test leaves a job running (they are detached and would outlive the session)."""
    for job in list_jobs():
        if job.status().get("status") in ("starting", "running"):
            cancel(job, wait_s=wait_s)


@pytest.fixture(autouse=True)
def stop_leftovers():
    yield
    cancel_live_jobs(wait_s=30)


def test_concurrent_starts_of_one_key_launch_one_process(workspace: Path) -> None:
    spec = selftest("dedupe")
    with ThreadPoolExecutor(4) as pool:  # four sessions asking at the same moment
        jobs = list(pool.map(lambda _: start_job(spec), range(4)))
    assert {j.dir for j in jobs} == {workspace / "jobs" / spec.name}
    job = jobs[0]
    running(job)
    pid = recorded_pid(job)
    again = start_job(spec)  # a later ask attaches too
    assert again.dir == job.dir and recorded_pid(again) == pid
    # the worker yields the CPU to the pages: niced BACKGROUND_NICE above whoever started it
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)
    assert launches(job) == 1
    assert json.loads((job.dir / "spec.json").read_text())["key"] == spec.key
    assert JobSpec("selftest", {**spec.params, "steps": 7}).key != spec.key  # params are in the key


def test_cancel_stops_the_job_and_a_restart_needs_asking(workspace: Path) -> None:
    spec = selftest("cancel")
    job = start_job(spec)
    running(job)
    pid = recorded_pid(job)
    assert request_cancel(job)
    st = finished(job)
    assert st["status"] == "cancelled"
    gone(job)  # the worker exits after recording it
    assert not (job.dir / "CANCEL").exists()  # the flag never cancels the next start
    assert not request_cancel(job)  # nothing runs: no flag is left behind
    assert not (job.dir / "CANCEL").exists()

    assert start_job(spec).status()["status"] == "cancelled" and launches(job) == 1  # no silent restart
    job = start_job(spec, restart=True)
    running(job)
    assert recorded_pid(job) != pid and launches(job) == 2


def test_a_killed_job_shows_stopped_then_starts_again(workspace: Path) -> None:
    spec = selftest("killed")
    job = start_job(spec)
    running(job)
    proc = ProcessId.from_record(json.loads((job.dir / "job.json").read_text()))
    os.killpg(proc.pgid, signal.SIGKILL)  # kill -9: no chance to write a final status
    st = wait_until(job, lambda s: s.get("status") != "running", "stop")
    assert st["status"] == "stopped" and "start it again" in st["message"]
    assert not request_cancel(job) and not force_stop(job)  # nothing to signal any more
    assert start_job(spec).status()["status"] == "stopped"
    job = start_job(spec, restart=True)  # the lock died with the process: a restart is possible
    running(job)
    assert launches(job) == 2


def test_a_failure_is_recorded_in_one_line(workspace: Path) -> None:
    job = start_job(JobSpec("selftest", {"steps": 1, "step_s": 0, "fail": "the data folder vanished"}))
    st = finished(job)
    assert st["status"] == "failed"
    assert st["message"] == "the data folder vanished"
    assert job.result() is None


def test_force_stop_signals_only_the_recorded_process(workspace: Path) -> None:
    spec = selftest("force")
    job = start_job(spec)
    running(job)
    record = json.loads((job.dir / "job.json").read_text())
    wrong = {**record, "pid_start": (record["pid_start"] or 0) + 1}  # the PID, reused by another process
    (job.dir / "job.json").write_text(json.dumps(wrong))
    assert not force_stop(job)
    assert job.status()["status"] == "running"
    (job.dir / "job.json").write_text(json.dumps(record))
    assert force_stop(job)  # SIGTERM: the worker ends as cancelled, not as a crash
    assert finished(job)["status"] == "cancelled"


def test_cli_lists_and_cancels_jobs(workspace: Path) -> None:
    spec = selftest("cli")
    job = start_job(spec)
    running(job)
    out = run_cli("jobs", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows[job.name]["status"] == "running" and rows[job.name]["kind"] == "selftest"
    assert rows[job.name]["total"] == 100_000 and rows[job.name]["eta_s"] is not None
    out = run_cli("jobs", "cancel", job.key[:10], "--wait", "120")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{job.name}: cancelled"
    assert job.status()["status"] == "cancelled"
    out = run_cli("jobs", "cancel", "no-such-job")
    assert out.returncode == 2 and "no job 'no-such-job'" in out.stderr


def test_a_finished_clusters_job_is_reused_and_embeddings_are_shared(demo_dir: Path) -> None:
    from h2a.analysis.cluster_jobs import clusters_spec, load_clusters
    from h2a.data.datasets import load_dataset
    from h2a.data.preprocess import PreprocessConfig

    ds = load_dataset(demo_dir)
    pp = PreprocessConfig(size=64)
    job = start_job(clusters_spec(ds, "pretrained", pp, k=2, pca=10, n_neighbors=10))
    st = finished(job)
    assert st["status"] == "finished", (st, job.log_tail())
    frame, scores, sweep, result = load_clusters(job)
    n = len(ds.with_images())
    assert len(frame) == result["n"] == n
    assert set(frame["cluster"]) == {0, 1} and frame["umap_x"].notna().all()
    assert scores["params"]["k"] == 2 and scores["verdict"]["follows"] in ("sex", "age", "both", "neither")
    assert list(sweep["k"]) == list(range(2, 11))
    stamp = (job.dir / "result.json").stat().st_mtime_ns

    again = start_job(clusters_spec(ds, "pretrained", pp, k=2, pca=10, n_neighbors=10))
    assert again.dir == job.dir and again.status()["status"] == "finished"
    assert launches(job) == 1 and (job.dir / "result.json").stat().st_mtime_ns == stamp  # not recomputed

    other = start_job(clusters_spec(ds, "pretrained", pp, k=3, pca=10, n_neighbors=10))
    assert other.dir != job.dir
    assert finished(other)["status"] == "finished", other.log_tail()
    assert set(load_clusters(other)[0]["cluster"]) == {0, 1, 2}
    emb_job = Job(job.dir.parent / result["embedding"]["job"])
    assert load_clusters(other)[3]["embedding"]["job"] == emb_job.name
    assert launches(emb_job) == 1  # one embedding pass served both clusterings
