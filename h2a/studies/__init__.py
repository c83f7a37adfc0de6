"""Studies: many ordinary H2A runs in one Optuna study (a search, or arms with seeds).

A study lives in Optuna RDB storage (SQLite in the workspace by default, any Optuna URL
with ``--storage``), so a killed study resumes and workers on several machines join the
same one. Each trial is a normal training run (its own run folder ``<study>-t<number>``,
its own MLflow run nested under the study's parent run) with a time budget; pruning reads
the per-epoch validation figure. Arm studies also predict the held-out split once per
trial (``RUN/holdout_predictions.csv``) for the paired comparisons of
``h2a.studies.compare``; the value optimised is always the validation figure.

This package's public face (the CLI, the Studies page and the report call only these):

* ``StudySpec`` - what ``h2a study run`` is given;
* ``default_storage()``, ``list_studies()``, ``load_study()``;
* ``study_summary(name, storage)`` - the dict ``h2a study show --json`` prints;
* ``start_study_job(spec)``, ``stop_study(name)``, ``study_job_status(name)`` - background
  studies, like background training runs.

The search-space YAML format is described in ``h2a.studies.space``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PRUNERS = ("median", "hyperband", "none")


@dataclass
class StudySpec:
    """Everything ``h2a study run`` takes; the page builds one and hands it to ``start_study_job``.

    ``trials`` None = the grid's size for an arm study (required for a search);
    ``pruner`` None = median for a search, none for arms (pruning an arm biases the comparison).
    """

    name: str
    data: str
    preset: str | None = None
    space_file: str | None = None
    trials: int | None = None
    trial_minutes: float = 5.0
    workers: int = 1
    storage: str | None = None
    pruner: str | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The public functions below import their module when called: those modules import StudySpec
# from this package, so importing them at the top here would be an import cycle.

def default_storage() -> str:
    """SQLite in the workspace: ``sqlite:///<workspace>/studies/studies.db``."""
    from h2a.studies.storage import default_storage as _default

    return _default()


def list_studies(storage: str | None = None) -> list[str]:
    """Names of the studies in ``storage`` (default: the workspace's), sorted."""
    from h2a.studies.storage import list_studies as _list

    return _list(storage)


def load_study(name: str, storage: str | None = None):
    """The ``optuna.Study`` called ``name``; KeyError when there is none."""
    from h2a.studies.storage import load_study as _load

    return _load(name, storage)


def study_summary(name: str, storage: str | None = None) -> dict:
    """``{"study", "preset", "task", "metric", "direction", "n_trials", "best", "trials", "comparisons"}``
    (and ``"clusters"`` for a clusters study); see ``h2a.studies.summary``."""
    from h2a.studies.summary import study_summary as _summary

    return _summary(name, storage)


def start_study_job(spec: StudySpec) -> Path:
    """Start ``h2a study run`` for ``spec`` in the background; returns its job folder
    ``<workspace>/studies/<name>/`` (job.json, log.txt, progress.json)."""
    from h2a.studies.jobs import start_study_job as _start

    return _start(spec)


def start_confirm_job(name: str, storage: str | None = None, views: int | None = None) -> Path:
    """Start ``h2a study confirm`` for a finished search in the background (its job folder)."""
    from h2a.studies.jobs import start_confirm_job as _start

    return _start(name, storage, views)


def stop_study(name: str) -> bool:
    """Ask a running study to stop (its running trials end after their current batch and
    are resumed by the next ``study run``); False when none of it runs here."""
    from h2a.studies.jobs import stop_study as _stop

    return _stop(name)


def study_job_status(name: str) -> dict:
    """``{"status": running|stopped|finished|failed|none, "pid", "log_tail", "finished", "total"}``."""
    from h2a.studies.jobs import study_job_status as _status

    return _status(name)


__all__ = ["PRUNERS", "StudySpec", "default_storage", "list_studies", "load_study", "start_confirm_job",
           "start_study_job", "stop_study", "study_job_status", "study_summary"]
