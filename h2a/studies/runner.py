"""Running a study: the coordinator (``h2a study run``), its workers and one trial's objective.

A trial is an ordinary training run through ``h2a.engine.trainer.train`` (its own folder
``<runs root>/<study>-t<number>``, ``time_budget_min`` = the trial minutes) with one extra
callback, ``TrialReporter``, which reports each epoch's validation figure to Optuna, stops a
run the pruner prunes (the run ends cleanly; its metadata's ``stop_reason`` and its
``study.json`` say 'pruned') and nests the run's MLflow run under the study's parent run.

The coordinator holds the study's job folder lock (one coordinator per study per
workspace), fails over the RUNNING trials of dead local workers (PID + start time; Optuna's
heartbeat does it for other machines), re-enqueues them so their run folders resume from
their last checkpoint, starts ``workers - 1`` worker processes and works itself as worker 0.
``trials`` counts finished (COMPLETE or PRUNED) trials over the study's whole life.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from h2a.engine.callbacks import CANCELLED, Callback
from h2a.engine.runs import (
    METADATA,
    PROGRESS,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    runs_root,
)
from h2a.exports import csv_bytes
from h2a.processes import ProcessId
from h2a.progress import ProgressFn
from h2a.studies import PRUNERS, StudySpec
from h2a.studies.compare import PREDICTION_FILES
from h2a.studies.space import Space, SpaceError, build_config, load_space, parse_space
from h2a.studies.storage import job_dir, open_storage, storage_url

TRIAL_FILE = "study.json"  # in a trial's run folder: which study and trial, and how it ended
STOP = "STOP"  # in the job folder: workers start no new trial
JOB_PROGRESS = "progress.json"
POLL_S = 5.0


class StudyError(RuntimeError):
    """A study cannot start or continue; the message says why in plain words."""


class TrialInterrupted(RuntimeError):
    """The trial's run was cancelled (``study stop``): FAIL now, resumed by the next ``study run``."""


class NoArmLeft(RuntimeError):
    """A worker found no queued arm left (another worker took the last one)."""


# -- per-epoch reporting and pruning -------------------------------------------------------
class TrialReporter(Callback):
    """Each epoch's validation figure -> ``trial.report``; a pruned trial's run stops after
    the epoch (saving its checkpoint and model as usual). Also nests the run's MLflow run."""

    def __init__(self, trial, key: str, study: str, prune: bool, parent_run_id: str | None = None) -> None:
        self.trial, self.key, self.study, self.prune = trial, key, study, prune
        self.parent_run_id = parent_run_id
        self.pruned_at: int | None = None
        self._tagged = parent_run_id is None

    def on_epoch_end(self, eng, record: dict) -> None:
        if not self._tagged:
            self._tagged = True
            nest_mlflow_run(eng, self.parent_run_id, self.study, self.trial.number)
        value = record.get(self.key)
        if value is None or not math.isfinite(float(value)) or eng.state.stop_reason == CANCELLED:
            return  # a stop cut this epoch short: the resumed run reports it whole
        self.trial.report(float(value), int(record["epoch"]))
        if self.prune and self.trial.should_prune():
            self.pruned_at = int(record["epoch"])
            eng.state.stop_reason = (f"pruned by study {self.study} at epoch {self.pruned_at} "
                                     f"({self.key} {float(value):.4g})")


def nest_mlflow_run(eng, parent_run_id: str, study: str, number: int) -> None:
    """Tag the run's MLflow run as a child of the study's (best effort, never fatal)."""
    from h2a.engine.tracking import MLflowTracker

    tracker = next((cb for cb in eng.callbacks if isinstance(cb, MLflowTracker)), None)
    if tracker is None or not tracker.enabled or not tracker.run_id:
        return
    try:
        from mlflow import MlflowClient

        from h2a.settings import get_settings

        client = MlflowClient(tracking_uri=get_settings().mlflow_uri)
        for key, value in (("mlflow.parentRunId", parent_run_id), ("h2a.study", study), ("h2a.trial", str(number))):
            client.set_tag(tracker.run_id, key, value)
    except Exception:  # noqa: BLE001, S110 - tracking must not fail a trial
        pass


def ensure_parent_run(study, task: str) -> str | None:
    """The study's MLflow parent run (created once, its id kept in the study's attributes)."""
    if study.user_attrs.get("mlflow_parent_run_id"):
        return study.user_attrs["mlflow_parent_run_id"]
    try:
        from mlflow import MlflowClient

        from h2a.settings import get_settings

        settings = get_settings()
        settings.workspace.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=settings.mlflow_uri)
        exp = client.get_experiment_by_name(f"h2a-{task}")
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(f"h2a-{task}")
        run = client.create_run(exp_id, run_name=f"study {study.study_name}", tags={"h2a.study": study.study_name})
        client.log_param(run.info.run_id, "study", study.study_name)
        study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        return run.info.run_id
    except Exception:  # noqa: BLE001 - a study runs without tracking rather than not at all
        return None


# -- the space and the study ---------------------------------------------------------------
def resolve_space(spec: StudySpec) -> tuple[Space | None, str | None]:
    """(space, preset name) from the spec; (None, None) when neither is given (an existing study)."""
    from h2a.studies.presets import get_preset

    if spec.preset and spec.space_file:
        raise SpaceError("give --preset or --space, not both")
    if spec.preset:
        return get_preset(spec.preset), spec.preset
    if spec.space_file:
        return load_space(spec.space_file), None
    return None, None


def task_facts(task: str) -> tuple[str, str, str]:
    """(final metric key, per-epoch key, direction) of a task."""
    from h2a.engine.tasks import get_task

    t = get_task(task)
    return t.headline_key, t.epoch_key, "minimize" if t.lower_is_better else "maximize"


def make_pruner(name: str, space: Space):
    """Median (after ``pruning.startup_trials`` finished trials, from epoch ``warmup_epochs + 1``)
    or Hyperband over epochs."""
    import optuna

    if name == "median":
        # epochs are reported from 1 and Optuna prunes from step n_warmup_steps on
        return optuna.pruners.MedianPruner(n_startup_trials=space.pruning["startup_trials"],
                                           n_warmup_steps=space.pruning["warmup_epochs"] + 1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=int(space.base.get("epochs", 10)),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def check_arms(space: Space, data: str) -> None:
    """Every arm builds a valid config, and arms have a held-out split to compare on."""
    for arm, settings in space.arms.items():
        try:
            cfg = build_config({**space.base, **settings}, data=data, out="unused", task=space.task)
        except SpaceError as exc:
            raise SpaceError(f"arms.{arm}: {exc}") from exc
        if cfg.holdout_fraction <= 0:
            raise SpaceError(f"arms.{arm}: arms are compared on a held-out split; set holdout_fraction > 0")


def open_or_create(spec: StudySpec, space: Space | None, preset: str | None):
    """The study (created, or loaded when it exists and its space is the same); returns (study, space)."""
    import optuna

    storage = open_storage(spec.storage)
    existing = spec.name in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if existing:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        stored = study.user_attrs.get("space")
        if space is not None and stored is not None and space.to_raw() != stored:
            raise StudyError(f"study {spec.name!r} already exists with another space; choose another --name "
                             "(or run it again without --preset/--space to continue it)")
        if stored is None:
            raise StudyError(f"study {spec.name!r} was not made by h2a (no space recorded)")
        return study, parse_space(stored, spec.name)
    if space is None:
        raise StudyError(f"no study named {spec.name!r} yet: give --preset or --space to create it")
    if not spec.data:
        raise StudyError("--data is required to create a study")
    if space.kind == "search" and not spec.trials:
        raise StudyError("a search needs --trials N")
    if space.kind == "arms":
        check_arms(space, spec.data)
    else:  # a search's fixed settings must be valid on their own
        build_config(space.base, data=spec.data, out="unused", task=space.task)
    metric, _, direction = task_facts(space.task)
    pruner = spec.pruner or ("median" if space.kind == "search" else "none")
    if pruner not in PRUNERS:
        raise StudyError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    study = optuna.create_study(study_name=spec.name, storage=storage, direction=direction, load_if_exists=True)
    attrs = {"space": space.to_raw(), "preset": preset, "kind": space.kind, "task": space.task, "metric": metric,
             "direction": direction, "data": str(Path(spec.data).resolve()), "trial_minutes": spec.trial_minutes,
             "pruner": pruner, "seed": spec.seed, "created": time.time()}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study, space


def target_trials(study, space: Space, trials: int | None) -> int:
    """How many finished trials the study aims at (``trials`` given now, else as recorded)."""
    if trials:
        study.set_user_attr("trials", int(trials))
    n = study.user_attrs.get("trials")
    if space.kind == "arms":
        return min(int(n), len(space.grid())) if n else len(space.grid())
    if not n:
        raise StudyError("a search needs --trials N")
    return int(n)


def enqueue_arms(study, space: Space, target: int) -> None:
    """Queue each (arm, seed) of the grid once (the first ``target`` of them)."""
    if study.user_attrs.get("enqueued"):
        return
    for arm, seed in space.grid()[:target]:
        study.enqueue_trial({"arm": arm, "seed": seed}, user_attrs={"arm": arm, "seed": seed})
    study.set_user_attr("enqueued", True)


def baseline_params(space: Space, data: str) -> dict | None:
    """The base's own value of every searched setting, or None when one lies outside its
    range: queued as a search's first trial, the base (the CPU recipe for ``recipe-search``)
    is judged on the same machine, budget and split as the configurations that would replace it."""
    from dataclasses import asdict

    cfg = build_config(dict(space.base), data=data, out="unused", task=space.task)
    values = {**asdict(cfg), **cfg.preprocess}
    out = {}
    for name, p in space.params.items():
        value = values.get(name)
        if p.type == "categorical":
            if value not in p.choices:
                return None
        elif value is None or not p.low <= value <= p.high or (p.step and abs((value - p.low) / p.step % 1) > 1e-9):
            return None
        out[name] = value
    return out


def enqueue_baseline(study, space: Space, data: str) -> bool:
    """Queue the base as trial 0 of a new search (not when trials were already queued by hand)."""
    if space.kind != "search" or study.get_trials(deepcopy=False):
        return False
    params = baseline_params(space, data)
    if params is None:
        return False
    study.enqueue_trial(params, user_attrs={"baseline": True})
    return True


# -- failing over and retrying -------------------------------------------------------------
def _worker_of(trial) -> ProcessId | None:
    return ProcessId.from_record(trial.user_attrs.get("worker") or {})


def fail_dead_local_trials(study) -> list[int]:
    """FAIL the RUNNING trials whose worker ran on this machine and is gone (a kill -9):
    no need to wait for the heartbeat's grace period."""
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        proc = _worker_of(t)
        if proc is not None and not proc.elsewhere() and not proc.alive():
            try:
                study._storage.set_trial_user_attr(t._trial_id, "failed_over", f"worker pid {proc.pid} ended")
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                failed.append(t.number)
            except Exception:  # noqa: BLE001, S110 - another coordinator got there first
                pass
    return failed


def enqueue_retries(study) -> list[int]:
    """Queue again each trial that failed without an error of its own (a dead worker, a
    stop): same params, same arm and seed, and its run folder to resume from."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    out = []
    for t in trials:
        if (t.state != TrialState.FAIL or "error" in t.user_attrs or t.user_attrs.get("spare")
                or t.number in retried or not t.params):
            continue
        attrs = {k: t.user_attrs[k] for k in ("arm", "seed", "baseline") if k in t.user_attrs}
        attrs["retry_of"] = t.number
        run = t.user_attrs.get("run")
        if run and (Path(run) / "checkpoint.pt").exists():
            attrs["resume_run"] = run
        study.enqueue_trial(dict(t.params), user_attrs=attrs)
        out.append(t.number)
    return out


# -- one trial ---------------------------------------------------------------------------
class Objective:
    """One trial: its settings, an ordinary training run, pruning, held-out predictions (arms)."""

    def __init__(self, study, space: Space, worker: int, log: Callable[[str], None] = print) -> None:
        self.study, self.space, self.worker, self.log = study, space, worker, log
        attrs = study.user_attrs
        self.name = study.study_name
        self.data = attrs["data"]
        self.minutes = float(attrs["trial_minutes"])
        self.prune = attrs.get("pruner", "none") != "none"
        self.seed = int(attrs.get("seed", 0))
        self.metric, self.epoch_key, _ = task_facts(space.task)
        self.parent = attrs.get("mlflow_parent_run_id")

    def settings(self, trial) -> dict:
        if self.space.kind == "arms":
            if "arm" not in trial.user_attrs:
                trial.set_user_attr("spare", True)
                raise NoArmLeft("no queued arm left for this worker")
            arm = trial.suggest_categorical("arm", list(self.space.arms))
            seed = trial.suggest_categorical("seed", list(self.space.seeds))
            # every arm and seed holds out the same images, so comparisons pair on all of them
            return {**self.space.base, **self.space.arms[arm], "seed": int(seed),
                    "split_seed": int(self.space.base.get("split_seed", self.space.base.get("seed", 0)))}
        values = {name: p.suggest(trial, name) for name, p in self.space.params.items()}
        trial.set_user_attr("seed", int(self.space.base.get("seed", self.seed)))
        return {"seed": self.seed, **self.space.base, **values}

    def __call__(self, trial) -> float:
        """The trial's value; any failure of its own is recorded as ``error`` (never retried,
        and counted towards the study's failure limit)."""
        import optuna

        try:
            return self._run(trial)
        except (optuna.TrialPruned, NoArmLeft, TrialInterrupted):
            raise
        except Exception as exc:
            trial.set_user_attr("error", str(exc) or type(exc).__name__)
            raise

    def _run(self, trial) -> float:
        import optuna

        from h2a.engine.trainer import train

        trial.set_user_attr("worker", {**ProcessId.of(os.getpid()).record(), "worker": self.worker})
        settings = self.settings(trial)
        run_dir = Path(trial.user_attrs.get("resume_run") or runs_root() / f"{self.name}-t{trial.number}")
        trial.set_user_attr("run", str(run_dir))
        cfg = build_config(settings, data=self.data, out=str(run_dir), task=self.space.task)
        cfg.time_budget_min = self.minutes
        if "workers" not in settings and _on_cpu(cfg.device):
            cfg.workers = 0  # loader processes compete with the workers' own threads
        self._mark(run_dir, trial, "RUNNING")
        reporter = TrialReporter(trial, self.epoch_key, self.name, self.prune, self.parent)
        self._report_history(run_dir, trial)
        self.log(f"trial {trial.number}{self._label(trial)}: training {run_dir.name}")
        meta = finished_meta(run_dir)  # a retried trial whose run had finished before the kill
        if meta is None:
            meta = train(cfg, log=lambda m: self.log(f"[t{trial.number}] {m}"), callbacks=[reporter])
        status = (read_json(run_dir / PROGRESS) or {}).get("status")
        if status == "cancelled":
            self._mark(run_dir, trial, "FAIL", note="stopped; the next `h2a study run` resumes it")
            raise TrialInterrupted(f"trial {trial.number} stopped")
        value = (meta.get("metrics") or {}).get(self.metric)
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"the run has no validation {self.metric}")
        value = float(value)
        trial.set_user_attr("validation", value)
        if reporter.pruned_at is not None:
            self._mark(run_dir, trial, "PRUNED", value=value, note=meta.get("stop_reason", ""))
            raise optuna.TrialPruned(meta.get("stop_reason", "pruned"))
        if self.space.kind == "arms":
            self._holdout(run_dir, trial)
        self._mark(run_dir, trial, "COMPLETE", value=value)
        return value

    def _label(self, trial) -> str:
        arm = trial.user_attrs.get("arm")
        return f" ({arm}, seed {trial.user_attrs.get('seed')})" if arm else ""

    def _report_history(self, run_dir: Path, trial) -> None:
        """A resumed run's earlier epochs, reported again so the pruner sees the whole curve."""
        for rec in (read_json(run_dir / PROGRESS) or {}).get("history", []):
            value = rec.get(self.epoch_key)
            if value is not None and math.isfinite(float(value)):
                trial.report(float(value), int(rec["epoch"]))

    def _holdout(self, run_dir: Path, trial) -> None:
        """Held-out predictions once (mirror + the space's views, as ``evaluate --tta``)."""
        path = save_predictions(run_dir, self.space.task, views=self.space.holdout_tta_views)
        trial.set_user_attr("holdout_predictions", str(path))

    def _mark(self, run_dir: Path, trial, state: str, value: float | None = None, note: str = "") -> None:
        rec = {"study": self.name, "trial": trial.number, "state": state, "value": value, "arm": trial.user_attrs.get("arm"),
               "seed": trial.user_attrs.get("seed"), "params": trial.params, "note": note, "updated": time.time()}
        atomic_write_json(run_dir / TRIAL_FILE, rec)


def finished_meta(run_dir: Path) -> dict | None:
    """metadata.json of a run folder that holds a finished run, else None."""
    if (read_json(run_dir / PROGRESS) or {}).get("status") != "finished":
        return None
    return read_json(run_dir / METADATA)


def _on_cpu(device: str) -> bool:
    from h2a.device import resolve_device

    try:
        return resolve_device(device).type == "cpu"
    except Exception:  # noqa: BLE001 - an unusable device fails in training with its own message
        return False


def save_predictions(run_dir: Path, task: str, split: str = "holdout", views: int = 0, flip_tta: bool = True,
                     progress: ProgressFn | None = None) -> Path:
    """``RUN/<split>_predictions.csv`` (``PREDICTION_FILES``): ``id, y, pred`` (months) or
    ``id, y, prob`` (P(male)), what the paired comparisons read."""
    from h2a.inference.evaluate import evaluate

    res = evaluate(run_dir, split=split, flip_tta=flip_tta, tta_views=views, record=False, progress=progress)
    p = res.predictions
    if task == "boneage":
        frame = pd.DataFrame({"id": p["id"].astype(str), "y": p["boneage"].astype(float),
                              "pred": p["predicted"].astype(float)})
    else:
        frame = pd.DataFrame({"id": p["id"].astype(str), "y": p["male"].astype(int), "prob": p["p_male"].astype(float)})
    path = Path(run_dir) / PREDICTION_FILES[split]
    atomic_write_bytes(path, csv_bytes(frame.sort_values("id")))  # users open it in spreadsheets too
    return path


# -- workers -------------------------------------------------------------------------------
def counts(study) -> dict[str, int]:
    """Trials by state (a spare arm trial, created in a race and failed at once, left out)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("spare"):
            continue
        out[t.state.name] = out.get(t.state.name, 0) + 1
        if t.state.name == "FAIL" and "error" in t.user_attrs:
            out["ERROR"] = out.get("ERROR", 0) + 1
    out["finished"] = out.get("COMPLETE", 0) + out.get("PRUNED", 0)
    return out


def load_for_work(name: str, storage: str | None, worker: int):
    """The study with its pruner and a sampler seeded per worker (two workers never replay one sequence)."""
    import optuna

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
    from optuna.trial import TrialState

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
    from h2a.device import gpu_count
    from h2a.engine.lock import TOKEN_ENV

    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(workers)))
    gpus = gpu_count() if not _on_cpu(device) else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = str(worker % gpus)
    return env


def threads_per_worker(workers: int) -> int:
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


# -- the coordinator -----------------------------------------------------------------------
class JobProgress:
    """``<job folder>/progress.json``: status, finished/total trials and the coordinator's PID."""

    def __init__(self, spec: StudySpec) -> None:
        self.path = job_dir(spec.name) / JOB_PROGRESS
        self.state = {"status": "running", **ProcessId.of(os.getpid()).record(), "study": spec.name,
                      "storage": storage_url(spec.storage), "finished": 0, "total": None, "message": "",
                      "started": time.time()}

    def update(self, **kw) -> None:
        self.state.update(kw, updated=time.time())
        atomic_write_json(self.path, self.state)

    def count(self, study, total: int | None) -> None:
        self.update(finished=counts(study)["finished"], total=total)


def study_lock(name: str, hint: str = ""):
    """The study's job-folder lock, its STOP flag cleared: one coordinator, confirmation or
    page-started job of a study at a time here. StudyError naming the holder (and ``hint``)."""
    from h2a.engine.lock import RunLock, RunLocked, describe_holder

    d = job_dir(name)
    try:
        lock = RunLock(d).acquire()
    except RunLocked as exc:
        raise StudyError(f"study {name} is already running here ({describe_holder(exc.holder)})"
                         + (f"; {hint}" if hint else "")) from exc
    (d / STOP).unlink(missing_ok=True)
    return lock


def run_study(spec: StudySpec, log: Callable[[str], None] = print, sources: dict[str, str | None] | None = None) -> dict:
    """``h2a study run``: create or continue the study, run it to its target, return its summary."""
    from h2a.studies.summary import study_summary

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


def _run_trials(study, space: Space, spec: StudySpec, log: Callable[[str], None], progress: JobProgress) -> None:
    target = target_trials(study, space, spec.trials)
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
    ensure_parent_run(study, space.task)
    progress.count(study, target)
    workers = max(1, int(spec.workers or 1))
    device = str(space.base.get("device", "auto"))
    if workers > 1:
        import torch

        torch.set_num_threads(threads_per_worker(workers))
    # Each worker takes an equal share, so every one of them contributes (a slow starter
    # is not left without work); what a failed worker leaves, worker 0 finishes after.
    share = math.ceil(max(0, target - counts(study)["finished"]) / workers)
    procs = spawn_workers(spec.name, spec.storage, workers, device, share)
    count = lambda: progress.count(study, target)
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
    _close_parent_run(study, counts(study)["finished"] >= target)


def _close_parent_run(study, done: bool) -> None:
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if not run_id or not done:
        return
    try:
        from mlflow import MlflowClient

        from h2a.settings import get_settings

        MlflowClient(tracking_uri=get_settings().mlflow_uri).set_terminated(run_id, "FINISHED")
    except Exception:  # noqa: BLE001, S110 - best effort
        pass


def default_cluster_sources() -> dict[str, str | None]:
    """ImageNet weights, and the best finished bone-age and sex runs of the workspace."""
    from h2a.engine.runs import best_run

    sources: dict[str, str | None] = {"imagenet": None}
    for task in ("boneage", "sex"):
        best = best_run(task)
        if best is not None:
            sources[task] = str(best.path)
    return sources


def run_clusters(study, space: Space, spec: StudySpec, sources: dict[str, str | None],
                 log: Callable[[str], None], progress: JobProgress) -> dict:
    """The ``clusters`` preset: no trials, one computation (``h2a.studies.clusters``) kept in the study."""
    from h2a.studies.clusters import clusters_study

    sources = sources or default_cluster_sources()
    log(f"study {spec.name}: clustering embeddings from {', '.join(sources)}")
    progress.update(total=len(sources), finished=0)

    def report(done: int, total: int, message: str = "") -> None:
        progress.update(message=message)

    result = clusters_study(study.user_attrs["data"], sources, k=int(space.clusters.get("k", 2)), seed=spec.seed,
                            progress=report)
    clean = json.loads(json.dumps(result, default=_jsonable))
    study.set_user_attr("clusters", clean)
    progress.update(finished=len(sources))
    return clean


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
