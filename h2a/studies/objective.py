"""One trial: its settings, an ordinary training run, pruning, held-out predictions (arms).

A trial is a training run through ``h2a.engine.trainer.train`` in its own folder
``<runs root>/<study>-t<number>`` (or the folder of the trial it retries, which resumes from
its checkpoint), with ``time_budget_min`` = the trial minutes and a ``TrialReporter``.
``study.json`` in that folder says which study and trial it belongs to and how it ended, so
the folder explains itself in the runs table without the study's storage.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from h2a.device import resolve_device
from h2a.engine.trainer import train
from h2a.processes import ProcessId
from h2a.run import Run, atomic_write_json, runs_root
from h2a.studies.create import task_facts
from h2a.studies.predictions import save_predictions
from h2a.studies.pruning import TrialReporter
from h2a.studies.space import Space, build_config
from h2a.studies.tracking import PARENT_ATTR

TRIAL_FILE = "study.json"  # in a trial's run folder: which study and trial, and how it ended


class TrialInterrupted(RuntimeError):
    """The trial's run was cancelled (``study stop``): FAIL now, resumed by the next ``study run``."""


class NoArmLeft(RuntimeError):
    """A worker found no queued arm left (another worker took the last one)."""


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
        self.parent = attrs.get(PARENT_ATTR)

    def settings(self, trial) -> dict:
        """The trial's settings: a queued arm and seed, or the sampler's values over the base."""
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
        try:
            return self._run(trial)
        except (optuna.TrialPruned, NoArmLeft, TrialInterrupted):
            raise
        except Exception as exc:
            trial.set_user_attr("error", str(exc) or type(exc).__name__)
            raise

    def _run(self, trial) -> float:
        trial.set_user_attr("worker", {**ProcessId.of(os.getpid()).record(), "worker": self.worker})
        settings = self.settings(trial)
        run_dir = Path(trial.user_attrs.get("resume_run") or runs_root() / f"{self.name}-t{trial.number}")
        trial.set_user_attr("run", str(run_dir))
        cfg = build_config(settings, data=self.data, out=str(run_dir), task=self.space.task)
        cfg.time_budget_min = self.minutes
        if "workers" not in settings and on_cpu(cfg.device):
            cfg.workers = 0  # loader processes compete with the workers' own threads
        self._mark(run_dir, trial, "RUNNING")
        reporter = TrialReporter(trial, self.epoch_key, self.name, self.prune, self.parent)
        self._report_history(run_dir, trial)
        self.log(f"trial {trial.number}{self._label(trial)}: training {run_dir.name}")
        meta = finished_meta(run_dir)  # a retried trial whose run had finished before the kill
        if meta is None:
            meta = train(cfg, log=lambda m: self.log(f"[t{trial.number}] {m}"), callbacks=[reporter])
        status = (Run.at(run_dir).progress or {}).get("status")
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
        for rec in (Run.at(run_dir).progress or {}).get("history", []):
            value = rec.get(self.epoch_key)
            if value is not None and math.isfinite(float(value)):
                trial.report(float(value), int(rec["epoch"]))

    def _holdout(self, run_dir: Path, trial) -> None:
        """Held-out predictions once (mirror + the space's views, as ``evaluate --tta``)."""
        path = save_predictions(run_dir, self.space.task, views=self.space.holdout_tta_views)
        trial.set_user_attr("holdout_predictions", str(path))

    def _mark(self, run_dir: Path, trial, state: str, value: float | None = None, note: str = "") -> None:
        """``study.json`` in the run folder: the trial's state as the run folder's reader sees it."""
        rec = {"study": self.name, "trial": trial.number, "state": state, "value": value, "arm": trial.user_attrs.get("arm"),
               "seed": trial.user_attrs.get("seed"), "params": trial.params, "note": note, "updated": time.time()}
        atomic_write_json(run_dir / TRIAL_FILE, rec)


def finished_meta(run_dir: Path) -> dict | None:
    """The metadata of a run folder that holds a finished run, else None."""
    run = Run.at(run_dir)
    if (run.progress or {}).get("status") != "finished":
        return None
    return run.meta


def on_cpu(device: str) -> bool:
    """Whether ``device`` resolves to the CPU, where trials share threads rather than GPUs."""
    try:
        return resolve_device(device).type == "cpu"
    except Exception:  # noqa: BLE001 - an unusable device fails in training with its own message
        return False
