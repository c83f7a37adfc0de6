"""Background studies: the page starts ``h2a study run`` (and ``h2a study confirm``)
detached, like a training run.

The job folder ``<workspace>/studies/<name>/`` plays a run folder's part: its lock (one
coordinator per study; taken here and handed to the job, ``h2a.engine.lock``), ``job.json``
(PID, process group, start time), ``log.txt`` and the coordinator's ``progress.json``. A
rerun, a page switch or a closed tab never touches the process; a restarted server finds
the study on disk. Stopping asks politely (the ``STOP`` flag and each running trial's
``CANCEL``): running trials end after their batch and resume on the next ``study run``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from h2a.engine.jobs import force_stop, log_tail, request_cancel, spawn_detached
from h2a.run import JobFolder, writer_alive
from h2a.studies import StudySpec
from h2a.studies.create import resolve_space
from h2a.studies.lock import STOP, study_lock
from h2a.studies.storage import job_dir, load_study, storage_url
from h2a.studies.confirm import DEFAULT_VIEWS


def study_command(spec: StudySpec) -> list[str]:
    """``python -m h2a study run ...`` for ``spec`` (absolute paths: any working directory)."""
    cmd = [sys.executable, "-m", "h2a", "study", "run", "--name", spec.name,
           "--trial-minutes", f"{spec.trial_minutes:g}", "--workers", str(spec.workers),
           "--storage", storage_url(spec.storage), "--seed", str(spec.seed)]
    if spec.data:  # not needed to continue an existing study
        cmd += ["--data", str(Path(spec.data).resolve())]
    if spec.preset:
        cmd += ["--preset", spec.preset]
    if spec.space_file:
        cmd += ["--space", str(Path(spec.space_file).resolve())]
    if spec.trials:
        cmd += ["--trials", str(spec.trials)]
    if spec.pruner:
        cmd += ["--pruner", spec.pruner]
    return cmd


def start_study_job(spec: StudySpec) -> Path:
    """Start the study's coordinator in the background; StudyError when it already runs here
    or the spec is unusable (checked now, so the page shows the reason at once)."""
    resolve_space(spec)  # a bad preset or space file fails here, not in the log
    return _start(spec.name, study_command(spec), spec.storage, {"spec": spec.to_dict()})


def start_confirm_job(name: str, storage: str | None = None, views: int | None = None) -> Path:
    """Start ``h2a study confirm`` in the background (the study's job folder and lock, so it
    never overlaps the study's own trials); StudyError when something of the study runs here."""
    cmd = [sys.executable, "-m", "h2a", "study", "confirm", name, "--storage", storage_url(storage),
           "--views", str(DEFAULT_VIEWS if views is None else views)]
    return _start(name, cmd, storage, {"confirm": True}, "confirming the best trial against the base…")


def _start(name: str, cmd: list[str], storage: str | None, record: dict, message: str = "starting…") -> Path:
    """Spawn ``cmd`` detached holding the study's job lock, after writing job.json and a
    'starting' progress.json (trial counts kept) the page reads at once."""
    d = job_dir(name)
    with study_lock(name) as lock:
        folder = JobFolder.at(d)
        job = spawn_detached(cmd, folder.log_file, lock)
        folder.write_job({**job.record(), "cmd": cmd, "started": time.time(), **record})
        old = folder.progress or {}
        folder.write_progress({"status": "starting", **job.record(), "study": name, "storage": storage_url(storage),
                               "finished": old.get("finished", 0), "total": old.get("total"), "message": message,
                               "updated": time.time()})
        lock.hand_over(job.pid)
    return d


def study_job_status(name: str) -> dict:
    """{"status": running|stopped|finished|failed|none, "pid", "log_tail", "finished", "total", "message"}."""
    d = job_dir(name)
    job, prog = JobFolder.at(d).job, JobFolder.at(d).progress
    if not job and not prog:
        return {"status": "none", "pid": None, "log_tail": "", "finished": 0, "total": None, "message": ""}
    prog = prog or {}
    status = prog.get("status", "stopped")
    if status in ("running", "starting"):
        status = "running" if writer_alive(d, prog) else "stopped"
    elif status not in ("finished", "failed"):
        status = "stopped"
    return {"status": status, "pid": prog.get("pid") or (job or {}).get("pid"), "log_tail": log_tail(d),
            "finished": prog.get("finished", 0), "total": prog.get("total"), "message": prog.get("message", "")}


def running_trial_runs(name: str, storage: str | None) -> list[Path]:
    """Run folders of the study's RUNNING trials."""
    try:
        study = load_study(name, storage)
    except KeyError:
        return []
    return [Path(t.user_attrs["run"]) for t in study.get_trials(deepcopy=False)
            if t.state.name == "RUNNING" and t.user_attrs.get("run")]


def stop_study(name: str) -> bool:
    """Ask the study to stop: no new trials, running trials cancelled after their batch.
    False when no coordinator of it runs on this machine."""
    d = job_dir(name)
    prog = JobFolder.at(d).progress or {}
    if not prog or prog.get("status") not in ("running", "starting") or not writer_alive(d, prog):
        return False
    (d / STOP).touch()
    for run in running_trial_runs(name, prog.get("storage")):
        request_cancel(run)
    return True


def kill_study(name: str) -> bool:
    """SIGTERM the background study's process group (workers included), for one that ignores a stop."""
    return force_stop(job_dir(name))
