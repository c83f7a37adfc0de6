"""Where studies live: Optuna RDB storage, SQLite in the workspace unless a URL is given.

Heartbeats let a study fail over the RUNNING trials of a worker that died on another
machine (after ``GRACE_S`` without a beat); a dead worker on this machine is recognised at
once by its PID and start time (``stale_local_trials``). SQLite is opened with a busy
timeout so several local workers can share one file.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from h2a.settings import get_settings

HEARTBEAT_S = 10  # a worker's trial beats this often ...
GRACE_S = 60  # ... and counts as dead after this long without a beat
SQLITE_TIMEOUT_S = 60


def studies_dir() -> Path:
    """``<workspace>/studies``: the SQLite file and one job folder per study."""
    return get_settings().workspace / "studies"


# Study names become folder names (the job folder, ``<study>-t<N>`` run folders): the run
# name rule of the training page, with room for the trial suffix. CLI and page both check it.
NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}"


def check_study_name(name: str) -> str:
    """``name`` when it is a usable study name, else ValueError saying what is allowed."""
    if not re.fullmatch(NAME_RULE, name or ""):
        raise ValueError(f"study name {name!r}: use letters, digits, '.', '-' and '_' (at most 71, starting "
                         "with a letter or digit)")
    return name


def job_dir(name: str) -> Path:
    return studies_dir() / name


def default_storage() -> str:
    return f"sqlite:///{(studies_dir() / 'studies.db').resolve()}"


def storage_url(storage: str | None) -> str:
    return storage or os.environ.get("H2A_STUDY_STORAGE", "").strip() or default_storage()


def open_storage(storage: str | None = None):
    """An RDBStorage with heartbeats (the SQLite file's folder created first)."""
    import optuna

    url = storage_url(storage)
    engine_kwargs = None
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are the point
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S)


def list_studies(storage: str | None = None) -> list[str]:
    import optuna

    url = storage_url(storage)
    if url == default_storage() and not (studies_dir() / "studies.db").exists():
        return []
    return sorted(s.study_name for s in optuna.get_all_study_summaries(open_storage(storage),
                                                                       include_best_trial=False))


def load_study(name: str, storage: str | None = None):
    """The study, or KeyError naming it (never creates an empty one)."""
    import optuna

    if name not in list_studies(storage):
        raise KeyError(f"no study named {name!r} in {storage_url(storage)}")
    return optuna.load_study(study_name=name, storage=open_storage(storage))
