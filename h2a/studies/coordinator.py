"""The coordinator: ``h2a study run``, one per study per workspace.

It holds the study's job-folder lock, fails over the RUNNING trials of dead local workers
(PID + start time; Optuna's heartbeat does it for other machines), re-enqueues them so their
run folders resume from their last checkpoint, starts ``workers - 1`` worker processes and
works itself as worker 0, keeping the job folder's progress record current for the page.
``trials`` counts finished (COMPLETE or PRUNED) trials over the study's whole life. The
``clusters`` preset has no trials: the coordinator runs its one computation instead.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from h2a.processes import ProcessId
from h2a.analysis.cluster_config import ClusterConfig
from h2a.run import best_run
from h2a.studies import StudySpec
from h2a.studies.clusters import clusters_study
from h2a.studies.create import open_or_create, resolve_space, target_trials
from h2a.studies.lock import STOP, job_folder, study_lock
from h2a.studies.space import Space
from h2a.studies.storage import job_dir, storage_url
from h2a.studies.summary import study_summary
from h2a.studies.tracking import close_parent_run, ensure_parent_run
from h2a.studies.trial_queue import counts, enqueue_arms, enqueue_baseline, enqueue_retries, fail_dead_local_trials
from h2a.studies.workers import run_worker, spawn_workers, threads_per_worker

POLL_S = 5.0


class JobProgress:
    """The job folder's progress record: status, finished/total trials and the coordinator's
    PID, what ``study_job_status`` and the Studies page read while the study runs."""

    def __init__(self, spec: StudySpec) -> None:
        self.folder = job_folder(spec.name)
        self.state = {"status": "running", **ProcessId.of(os.getpid()).record(), "study": spec.name,
                      "storage": storage_url(spec.storage), "finished": 0, "total": None, "message": "",
                      "started": time.time()}

    def update(self, **kw: Any) -> None:
        self.state.update(kw, updated=time.time())
        self.folder.write_progress(self.state)

    def count(self, study, total: int | None) -> None:
        self.update(finished=counts(study)["finished"], total=total)


def run_study(spec: StudySpec, log: Callable[[str], None] = print, sources: dict[str, str | None] | None = None) -> dict:
    """``h2a study run``: create or continue the study, run it to its target, return its summary."""
    space, preset = resolve_space(spec)
    d = job_dir(spec.name)
    with study_lock(spec.name, f"stop it with `h2a study stop {spec.name}` or wait"):
        study, space = open_or_create(spec, space, preset)
        progress = JobProgress(spec)
        progress.update(status="running", message="")
        status, message = "failed", ""
        try:
            if space.kind == "clusters":
                run_clusters(study, space, spec, sources or {}, log, progress)
            else:
                _run_trials(study, space, spec, log, progress)
            c = counts(study)
            stopped = (d / STOP).exists()
            status = "stopped" if stopped else "finished"
            message = f"{c['finished']} finished trials" + (" (stopped)" if stopped else "")
        except KeyboardInterrupt:
            status, message = "stopped", "interrupted"
            raise
        except Exception as exc:
            message = str(exc)
            raise
        finally:
            progress.update(status=status, message=message)
    return study_summary(spec.name, spec.storage)


def _prepare_queue(study, space: Space, spec: StudySpec, log: Callable[[str], None], target: int) -> None:
    """Fail over dead local trials and queue what runs next: arms or the baseline, then retries."""
    failed = fail_dead_local_trials(study)
    if failed:
        log(f"study {spec.name}: trials {', '.join(map(str, failed))} were left running by a process that "
            "ended; failed over")
    if space.kind == "arms":
        enqueue_arms(study, space, target)
    elif enqueue_baseline(study, space, spec.data):
        log(f"study {spec.name}: trial 0 is the base settings (the baseline the search must beat)")
    retried = enqueue_retries(study)
    if retried:
        log(f"study {spec.name}: trials {', '.join(map(str, retried))} queued again (their runs resume)")


def _run_trials(study, space: Space, spec: StudySpec, log: Callable[[str], None], progress: JobProgress) -> None:
    target = target_trials(study, space, spec.trials)
    _prepare_queue(study, space, spec, log, target)
    ensure_parent_run(study, space.task)
    progress.count(study, target)
    workers = max(1, int(spec.workers or 1))
    device = str(space.base.get("device", "auto"))
    if workers > 1:
        torch.set_num_threads(threads_per_worker(workers))
    # Each worker takes an equal share, so every one of them contributes (a slow starter
    # is not left without work); what a failed worker leaves, worker 0 finishes after.
    share = math.ceil(max(0, target - counts(study)["finished"]) / workers)
    procs = spawn_workers(spec.name, spec.storage, workers, device, share)
    count = lambda: progress.count(study, target)  # noqa: E731
    try:
        run_worker(spec.name, spec.storage, 0, log, after_trial=count, max_trials=share if procs else None)
        while any(p.poll() is None for p in procs):
            count()
            time.sleep(POLL_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.wait()
    if procs and not (job_dir(spec.name) / STOP).exists():
        run_worker(spec.name, spec.storage, 0, log, after_trial=count)
    count()
    close_parent_run(study, counts(study)["finished"] >= target)


def default_cluster_sources() -> dict[str, str | None]:
    """ImageNet weights, and the best finished bone-age and sex runs of the workspace."""
    sources: dict[str, str | None] = {"imagenet": None}
    for task in ("boneage", "sex"):
        best = best_run(task)
        if best is not None:
            sources[task] = str(best.path)
    return sources


def run_clusters(study, space: Space, spec: StudySpec, sources: dict[str, str | None],
                 log: Callable[[str], None], progress: JobProgress) -> dict:
    """The ``clusters`` preset: no trials, one computation (``h2a.studies.clusters``) kept in the study."""
    sources = sources or default_cluster_sources()
    log(f"study {spec.name}: clustering embeddings from {', '.join(sources)}")
    progress.update(total=len(sources), finished=0)

    def report(done: int, total: int, message: str = "") -> None:
        progress.update(message=message)

    result = clusters_study(study.user_attrs["data"], sources, ClusterConfig.from_dict(space.clusters), seed=spec.seed,
                            progress=report)
    clean = json.loads(json.dumps(result, default=_jsonable))
    study.set_user_attr("clusters", clean)
    progress.update(finished=len(sources))
    return clean


def _jsonable(obj: Any) -> Any:
    """Arrays as lists, anything else as its text: the study's attributes hold plain JSON only."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
