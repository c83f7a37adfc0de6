"""What ``h2a study show --json`` prints, the Studies page shows and the report writes up.

``value`` is always the validation figure the study optimised (MAE, or AUC for sex); the
held-out figures appear only in ``comparisons`` (arms vs the reference arm on the same
held-out images, ``h2a.studies.compare``), so nothing was tuned on them.
"""

from __future__ import annotations

import math
from pathlib import Path

from h2a.studies.compare import PREDICTION_FILES, arm_comparisons, read_predictions
from h2a.studies.storage import load_study

CONFIRM_ATTR = "confirmation"  # a search's best trial vs its base (h2a.studies.confirm), stored in the study


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def trial_row(t) -> dict:
    """One trial as the summary lists it."""
    run = t.user_attrs.get("run")
    duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    row = {"number": t.number, "state": t.state.name, "params": dict(t.params),
           "value": _finite(t.value) if t.state.name == "COMPLETE" else _finite(t.user_attrs.get("validation")),
           "run": Path(run).name if run else None, "run_dir": run, "arm": t.user_attrs.get("arm"),
           "seed": t.user_attrs.get("seed"), "duration_s": duration,
           "worker": (t.user_attrs.get("worker") or {}).get("worker")}
    for key in ("error", "failed_over", "retry_of", "baseline"):
        if key in t.user_attrs:
            row[key] = t.user_attrs[key]
    if t.intermediate_values:
        row["epochs_reported"] = len(t.intermediate_values)
    return row


def arm_frames(study) -> dict[str, list]:
    """Each arm's finished trials' held-out predictions (one DataFrame per trial), arms in grid order."""
    arms = list((study.user_attrs.get("space") or {}).get("arms") or {})
    out: dict[str, list] = {a: [] for a in arms}
    for t in study.get_trials(deepcopy=False):
        arm, run = t.user_attrs.get("arm"), t.user_attrs.get("run")
        if t.state.name != "COMPLETE" or arm not in out or not run:
            continue
        path = Path(run) / PREDICTION_FILES["holdout"]
        if path.exists():
            out[arm].append(read_predictions(path))
    return out


def comparisons(study) -> list[dict]:
    """Every arm against the reference arm (the space's, or the first) on held-out images."""
    space = study.user_attrs.get("space") or {}
    arms = list(space.get("arms") or {})
    if len(arms) < 2:
        return []
    reference = space.get("reference") or arms[0]
    frames = arm_frames(study)
    if not frames.get(reference) or not any(v for k, v in frames.items() if k != reference):
        return []
    return arm_comparisons({k: v for k, v in frames.items() if v}, reference, study.user_attrs.get("metric", "mae"))


def study_summary(name: str, storage: str | None = None) -> dict:
    study = load_study(name, storage)
    attrs = study.user_attrs
    space = attrs.get("space") or {}
    trials = [trial_row(t) for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("spare")]
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    best = None
    if done:
        pick = min if attrs.get("direction", "minimize") == "minimize" else max
        b = pick(done, key=lambda t: t["value"])
        best = {k: b[k] for k in ("number", "value", "params", "run", "arm", "seed")}
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t["state"]] = by_state.get(t["state"], 0) + 1
    out = {
        "study": name, "preset": attrs.get("preset"), "kind": attrs.get("kind"), "task": attrs.get("task"),
        "metric": attrs.get("metric"), "direction": attrs.get("direction"),
        "description": space.get("description", ""), "data": attrs.get("data"),
        "trial_minutes": attrs.get("trial_minutes"), "pruner": attrs.get("pruner"),
        "target_trials": attrs.get("trials") or (len(space.get("arms") or {}) * len(space.get("seeds") or [0])
                                                 if space.get("arms") else None),
        "reference": (space.get("reference") or next(iter(space.get("arms") or {}), None)) if space.get("arms") else None,
        "n_trials": len(trials), "states": by_state,
        "n_finished": by_state.get("COMPLETE", 0) + by_state.get("PRUNED", 0),
        "best": best, "trials": trials, "comparisons": comparisons(study) if space.get("arms") else [],
    }
    base = next((t for t in trials if t.get("baseline")), None)
    if base is not None:
        out["baseline"] = {k: base[k] for k in ("number", "state", "value", "params", "run")}
    if attrs.get(CONFIRM_ATTR):
        out["confirmation"] = attrs[CONFIRM_ATTR]
    if "clusters" in attrs or space.get("clusters") is not None:
        out["clusters"] = attrs.get("clusters")
    return out
