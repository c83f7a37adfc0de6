"""Creating a study, or opening one that exists: its space, its recorded facts, its target.

Everything a worker needs later (data folder, trial minutes, pruner, seed, metric and
direction) is stored in the study's user attributes when it is created, so a worker on any
machine, or a later ``h2a study run NAME`` with no other option, runs it the same way. A
study asked for again with another space is refused rather than silently mixed.
"""

from __future__ import annotations

import time
from pathlib import Path

from h2a.inference.tasks import get_task
from h2a.studies import PRUNERS, StudySpec
from h2a.studies.errors import StudyError
from h2a.studies.presets import get_preset
from h2a.studies.space import Space, SpaceError, build_config, load_space, parse_space
from h2a.studies.storage import open_storage


def resolve_space(spec: StudySpec) -> tuple[Space | None, str | None]:
    """(space, preset name) from the spec; (None, None) when neither is given (an existing study)."""
    if spec.preset and spec.space_file:
        raise SpaceError("give --preset or --space, not both")
    if spec.preset:
        return get_preset(spec.preset), spec.preset
    if spec.space_file:
        return load_space(spec.space_file), None
    return None, None


def task_facts(task: str) -> tuple[str, str, str]:
    """(final metric key, per-epoch key, direction) of a task."""
    t = get_task(task)
    return t.headline_key, t.epoch_key, "minimize" if t.lower_is_better else "maximize"


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
    import optuna  # import cost: the Studies page imports this module (resolve_space) without running a study

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
