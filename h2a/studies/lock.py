"""A study's job folder ``<workspace>/studies/<name>/``: one holder at a time, a STOP flag.

The coordinator (``h2a study run``), a confirmation and a page-started job all take the same
lock (``h2a.engine.lock``), so two of them never change one study's trials at once here. The
folder is a ``JobFolder`` (``job.json``, ``log.txt``, the coordinator's ``progress.json``);
``STOP`` in it tells every worker to start no new trial.
"""

from __future__ import annotations

from h2a.engine.lock import RunLock, RunLocked, describe_holder
from h2a.run import JobFolder
from h2a.studies.errors import StudyError
from h2a.studies.storage import job_dir

STOP = "STOP"  # in the job folder: workers start no new trial


def job_folder(name: str) -> JobFolder:
    """The study's job folder as a ``JobFolder`` (its progress record, job record and log)."""
    return JobFolder.at(job_dir(name))


def study_lock(name: str, hint: str = "") -> RunLock:
    """The study's job-folder lock, its STOP flag cleared: one coordinator, confirmation or
    page-started job of a study at a time here. StudyError naming the holder (and ``hint``)."""
    d = job_dir(name)
    try:
        lock = RunLock(d).acquire()
    except RunLocked as exc:
        raise StudyError(f"study {name} is already running here ({describe_holder(exc.holder)})"
                         + (f"; {hint}" if hint else "")) from exc
    (d / STOP).unlink(missing_ok=True)
    return lock
