"""Workers: processes that take trials from a study until it has its finished trials.

Worker 0 is the coordinator itself; workers 1..K-1 are ``python -m h2a study worker``
processes, each with its share of the CPU threads (or its own GPU of several) and a
sampler seeded by its number, so two workers never replay one sequence of settings.
Workers on other machines run the same loop against the same storage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from h2a.device import gpu_count
from h2a.engine.lock import TOKEN_ENV
from h2a.studies.create import target_trials
from h2a.studies.lock import STOP
from h2a.studies.objective import Objective, on_cpu
from h2a.studies.pruning import make_pruner
from h2a.studies.space import Space, parse_space
from h2a.studies.storage import job_dir, open_storage, storage_url
from h2a.studies.trial_queue import counts, fail_dead_local_trials


def load_for_work(name: str, storage: str | None, worker: int) -> tuple[optuna.Study, Space]:
    """The study with its pruner and a sampler seeded per worker (two workers never replay one sequence)."""
    st = open_storage(storage)
    probe = optuna.load_study(study_name=name, storage=st)
    space = parse_space(probe.user_attrs["space"], name)
    seed = int(probe.user_attrs.get("seed", 0)) * 1000 + 7919 * worker + len(probe.get_trials(deepcopy=False))
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.load_study(study_name=name, storage=st, sampler=sampler,
                              pruner=make_pruner(probe.user_attrs.get("pruner", "none"), space))
    return study, space


def run_worker(name: str, storage: str | None = None, worker: int = 0, log: Callable[[str], None] = print,
               after_trial: Callable[[], None] | None = None, max_trials: int | None = None) -> int:
    """Run trials until the study has its finished trials, a stop, or ``max_trials`` of its own;
    returns how many this worker ran."""
    study, space = load_for_work(name, storage, worker)
    target = target_trials(study, space, None)
    stop = job_dir(name) / STOP
    objective = Objective(study, space, worker, log)
    ran = 0
    while not stop.exists() and (max_trials is None or ran < max_trials):
        fail_dead_local_trials(study)
        c = counts(study)
        if c["finished"] >= target:
            break
        if c.get("ERROR", 0) >= max(3, target):
            log(f"study {name}: {c['ERROR']} trials failed with errors; stopping (see `h2a study show {name}`)")
            break
        waiting = c.get(TrialState.WAITING.name, 0)
        if space.kind == "arms" and not waiting:
            break  # every arm is taken; the other workers finish theirs
        if space.kind == "search" and not waiting and c["finished"] + c.get("RUNNING", 0) >= target:
            break
        study.optimize(objective, n_trials=1, catch=(Exception,))
        ran += 1
        if after_trial is not None:
            after_trial()
    return ran


def worker_env(worker: int, workers: int, device: str) -> dict[str, str]:
    """A worker process's environment: its share of the CPU threads, or its GPU of several."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(workers)))
    gpus = gpu_count() if not on_cpu(device) else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = str(worker % gpus)
    return env


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores, so K workers do not oversubscribe the machine."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def spawn_workers(name: str, storage: str | None, workers: int, device: str, share: int) -> list[subprocess.Popen]:
    """Workers 1..K-1 as ``python -m h2a study worker`` processes (worker 0 is the coordinator),
    each running at most ``share`` trials."""
    procs = []
    for i in range(1, workers):
        cmd = [sys.executable, "-m", "h2a", "study", "worker", "--name", name, "--worker", str(i),
               "--storage", storage_url(storage), "--max-trials", str(share)]
        procs.append(subprocess.Popen(cmd, env=worker_env(i, workers, device), stdin=subprocess.DEVNULL))
    return procs
