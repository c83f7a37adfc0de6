"""Does a search's winner beat the settings it started from? (``h2a study confirm NAME``)

A search queues its base settings as trial 0 (for ``recipe-search``: the CPU recipe) and
picks its best trial on validation. Confirming compares the two on the same images, twice:

1. **Validation**, one view (the procedure the study's value was measured with), paired
   bootstrap: this decides. The best of many trials is picked *because* it scored well
   here, so its lead is optimistic; a lead inside the paired CI is noise and the base stands.
2. **Held-out, once**, both runs with the recipe's procedure (the image, its mirror and
   ``views`` augmented copies), paired: the unbiased figure to report, never used to choose.

The result is stored in the study (``user_attrs["confirmation"]``) with each run's
prediction files, so ``study show``, the report and the Studies page show it and a second
call returns it without looking at held-out again (a study that went on and found another
best trial is confirmed afresh). Confirming holds the study's job lock: it never runs while
trials can still change the best, and the page starts it in the background like a study.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from h2a.run import JobFolder
from h2a.processes import ProcessId
from h2a.studies.compare import METRICS, arm_comparisons, read_predictions, score_predictions
from h2a.studies.errors import StudyError
from h2a.studies.lock import STOP, study_lock
from h2a.studies.predictions import save_predictions
from h2a.studies.storage import job_dir, load_study, storage_url
from h2a.studies.summary import CONFIRM_ATTR

DEFAULT_VIEWS = 64  # the recipe's held-out procedure (recipes/boneage_cpu.sh): mirror + 64 views


class ConfirmStopped(StudyError):
    """``h2a study stop`` (or the page's stop button) asked a running confirmation to stop."""


def _pick(study):
    """(base trial, best trial) of a finished search; StudyError saying what is missing."""
    attrs = study.user_attrs
    if attrs.get("kind") != "search":
        raise StudyError(f"study {study.study_name} is not a search: arm studies compare on held-out in "
                         "`h2a study show`, a clusters study has no trials to confirm")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
            and t.user_attrs.get("run")]
    base = next((t for t in done if t.user_attrs.get("baseline")), None)
    if base is None:
        raise StudyError(f"study {study.study_name}: the base settings' trial has not finished (it is trial 0 of a "
                         "search whose base lies inside its space); run the study on first")
    pick = min if attrs.get("direction", "minimize") == "minimize" else max
    return base, pick(done, key=lambda t: t.value)


def _label(trial, base) -> str:
    return f"trial {trial.number} (base)" if trial.number == base.number else f"trial {trial.number}"


def _trial_record(t) -> dict:
    return {"number": t.number, "value": float(t.value), "params": dict(t.params), "run": Path(t.user_attrs["run"]).name}


def _decide(best, base, validation: dict | None, metric: str) -> tuple[bool, str]:
    """Adopt the best trial's settings only when its validation lead is beyond the paired CI."""
    label = METRICS[metric].label
    if validation is None:
        return False, (f"the base settings (trial {base.number}) had the best validation {label} of the finished "
                       "trials: they stand")
    if validation.get("difference") is None:
        return False, f"no comparison of trial {best.number} with the base ({validation.get('error')}): the base stands"
    better = validation["significant"] and (validation["difference"] > 0) == METRICS[metric].higher_is_better
    if better:
        return True, (f"trial {best.number} beats the base settings on validation beyond noise (95% CI "
                      f"{validation['ci_low']:+.2f} to {validation['ci_high']:+.2f}): adopt its settings")
    return False, (f"trial {best.number}'s validation lead over the base settings (trial {base.number}) is within "
                   f"noise (95% CI {validation['ci_low']:+.2f} to {validation['ci_high']:+.2f} includes 0 or "
                   "favours the base): the base settings stand")


def confirm_search(name: str, storage: str | None = None, views: int = DEFAULT_VIEWS,
                   log: Callable[[str], None] = print) -> dict:
    """Best trial against the base on validation, then once on held-out; stored in the study.

    Returns the stored record: ``best`` / ``baseline`` (number, value, params, run),
    ``metric``, ``views``, ``validation`` and ``holdout`` (``h2a.studies.compare`` comparison
    rows, best - base; None when the base was best), ``holdout_values`` (each run's held-out
    figure), ``adopt``, ``decision`` (plain language), ``measured`` (epoch seconds) and
    ``reused`` (True when an earlier confirmation of the same best trial was returned).
    """
    if views < 0:
        raise StudyError(f"--views must be 0 or more, got {views}")
    try:
        study = load_study(name, storage)
    except KeyError as exc:
        raise StudyError(str(exc.args[0])) from exc
    base, best = _pick(study)
    stored = study.user_attrs.get(CONFIRM_ATTR)
    if stored and stored["best"]["number"] == best.number and stored["views"] == views:
        log(f"study {name}: trial {best.number} against the base was measured on "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(stored['measured']))}; held-out is not looked at again")
        return {**stored, "reused": True}
    d = job_dir(name)
    with study_lock(name, f"confirm once it has finished or been stopped (`h2a study stop {name}`)"):
        progress = _Progress(d, name, storage)
        try:
            record = _measure(study, base, best, views, progress, log)
        except ConfirmStopped:
            progress.end("stopped", "confirmation stopped before it finished; nothing stored")
            raise
        except Exception as exc:
            progress.end("failed", f"confirmation failed: {exc}")
            raise
        study.set_user_attr(CONFIRM_ATTR, record)
        progress.end("finished", f"confirmed: {record['decision']}")
    return {**record, "reused": False}


def _measure(study, base, best, views: int, progress: _Progress, log: Callable[[str], None]) -> dict:
    attrs = study.user_attrs
    metric, task = attrs.get("metric", "mae"), attrs.get("task", "boneage")
    same = best.number == base.number
    trials = [base] if same else [best, base]
    procedures = {"validation": (False, 0), "holdout": (True, views)}
    frames: dict[str, dict[str, object]] = {split: {} for split in procedures}
    steps = [(split, t) for split in procedures for t in trials]
    for i, (split, t) in enumerate(steps, 1):
        flip, n_views = procedures[split]
        what = "one view" if not flip else f"the image, its mirror and {n_views} augmented copies"
        message = f"{split} predictions of {_label(t, base)} ({what}), step {i} of {len(steps)}"
        log(f"study {study.study_name}: {message}")
        progress.update(message)
        run = Path(t.user_attrs["run"])
        try:
            path = save_predictions(run, task, split=split, views=n_views, flip_tta=flip, progress=progress.check)
        except ConfirmStopped:
            raise
        except Exception as exc:  # a run folder moved or damaged since the trial: name it
            raise StudyError(f"{_label(t, base)} ({run}): {split} predictions failed: {exc}") from exc
        frames[split][_label(t, base)] = read_predictions(path)
    out: dict = {"best": _trial_record(best), "baseline": _trial_record(base), "metric": metric, "views": views,
                 "n_finished_trials": sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))}
    for split in procedures:
        out[split] = None if same else arm_comparisons(
            {_label(best, base): [frames[split][_label(best, base)]], _label(base, base): [frames[split][_label(base, base)]]},
            _label(base, base), metric)[0]
    out["holdout_values"] = {label: score_predictions(frame, metric) for label, frame in frames["holdout"].items()}
    out["n_holdout"] = len(next(iter(frames["holdout"].values())))
    out["adopt"], out["decision"] = _decide(best, base, out["validation"], metric)
    out["measured"] = time.time()
    return out


class _Progress:
    """The study job's progress.json while confirming (the page's monitor reads it) and the
    stop check the evaluation calls between batches."""

    def __init__(self, d: Path, name: str, storage: str | None) -> None:
        self.d = d
        old = JobFolder.at(d).progress or {}
        self.state = {"status": "running", **ProcessId.of(os.getpid()).record(), "study": name,
                      "storage": storage_url(storage), "finished": old.get("finished", 0), "total": old.get("total"),
                      "message": "confirming the best trial against the base", "started": time.time()}

    def update(self, message: str) -> None:
        self.state.update(message=message, updated=time.time())
        JobFolder.at(self.d).write_progress(self.state)

    def end(self, status: str, message: str) -> None:
        self.state["status"] = status
        self.update(message)

    def check(self, done: int, total: int, message: str = "") -> None:
        if (self.d / STOP).exists():
            raise ConfirmStopped("confirmation stopped")
