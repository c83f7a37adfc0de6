"""What a study runs next: the arms grid, a search's baseline, and retries of trials that a
dead worker or a stop left unfinished.

Optuna's queue (``enqueue_trial``) carries each trial's fixed params and attributes, so any
worker on any machine picks up the same work. A trial failed by its own error is never
retried (it would fail again); one failed over (a kill, a stop) is, and its run folder
resumes from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict

from optuna.trial import TrialState

from h2a.processes import ProcessId
from h2a.run import Run
from h2a.studies.space import Space, build_config


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


def _worker_of(trial) -> ProcessId | None:
    return ProcessId.from_record(trial.user_attrs.get("worker") or {})


def fail_dead_local_trials(study) -> list[int]:
    """FAIL the RUNNING trials whose worker ran on this machine and is gone (a kill -9):
    no need to wait for the heartbeat's grace period."""
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
        if run and Run.at(run).checkpoint_file.exists():
            attrs["resume_run"] = run
        study.enqueue_trial(dict(t.params), user_attrs=attrs)
        out.append(t.number)
    return out
