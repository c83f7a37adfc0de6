"""Finished studies built with Optuna directly (no training): what a `sex-input` arm study
and a small search leave in the workspace's storage, with each trial's run folder holding
its ``holdout_predictions.csv``. Shared by the report and page tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

N_HOLDOUT = 120


def _holdout(run_dir: Path, ids: list[str], y: np.ndarray, pred: np.ndarray) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "y": y, "pred": pred}).to_csv(run_dir / "holdout_predictions.csv", index=False)


def arm_study(name: str, models_dir: Path, data: str = "/data/demo", seeds: int = 2) -> None:
    """A finished `sex-input` study: without-sex 4 months worse on every held-out image."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from h2a.studies.presets import preset_raw
    from h2a.studies.storage import open_storage

    space = preset_raw("sex-input")
    space["seeds"] = list(range(seeds))
    study = optuna.create_study(study_name=name, storage=open_storage(None), direction="minimize")
    for key, value in {"space": space, "preset": "sex-input", "kind": "arms", "task": "boneage", "metric": "mae",
                       "direction": "minimize", "data": data, "trial_minutes": 2.0, "pruner": "none",
                       "seed": 0}.items():
        study.set_user_attr(key, value)
    rng = np.random.default_rng(0)
    ids = [f"{1000 + i}" for i in range(N_HOLDOUT)]
    y = rng.uniform(12, 216, N_HOLDOUT)
    err = rng.normal(0, 8, N_HOLDOUT)
    dists = {"arm": CategoricalDistribution(list(space["arms"])), "seed": CategoricalDistribution(space["seeds"])}
    number = 0
    for arm, extra in (("with-sex", 0.0), ("without-sex", 4.0)):
        for seed in space["seeds"]:
            run = models_dir / f"{name}-t{number}"
            noise = rng.normal(0, 0.5, N_HOLDOUT)
            _holdout(run, ids, y, y + np.sign(err) * (np.abs(err) + extra) + noise)
            trial = optuna.trial.create_trial(
                params={"arm": arm, "seed": seed}, distributions=dists, value=7.0 + extra + 0.1 * seed,
                user_attrs={"arm": arm, "seed": seed, "run": str(run), "validation": 7.0 + extra})
            study.add_trial(trial)
            number += 1


def search_study(name: str, models_dir: Path, data: str = "/data/demo", n: int = 6) -> None:
    """A finished search over lr and batch size, one trial pruned."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from h2a.studies.presets import preset_raw
    from h2a.studies.storage import open_storage

    study = optuna.create_study(study_name=name, storage=open_storage(None), direction="minimize")
    for key, value in {"space": preset_raw("recipe-search"), "preset": "recipe-search", "kind": "search",
                       "task": "boneage", "metric": "mae", "direction": "minimize", "data": data,
                       "trial_minutes": 1.0, "pruner": "median", "trials": n, "seed": 0}.items():
        study.set_user_attr(key, value)
    dists = {"lr": FloatDistribution(5e-4, 6e-3, log=True), "batch_size": CategoricalDistribution([16, 32, 64])}
    rng = np.random.default_rng(1)
    for i in range(n):
        lr = float(np.exp(rng.uniform(np.log(5e-4), np.log(6e-3))))
        state = optuna.trial.TrialState.PRUNED if i == n - 1 else optuna.trial.TrialState.COMPLETE
        trial = optuna.trial.create_trial(
            params={"lr": lr, "batch_size": [16, 32, 64][i % 3]}, distributions=dists, state=state,
            value=None if state == optuna.trial.TrialState.PRUNED else 9.0 + 300 * abs(lr - 2e-3),
            intermediate_values={0: 12.0, 1: 11.0}, user_attrs={"run": str(models_dir / f"{name}-t{i}")})
        study.add_trial(trial)


def search_with_base(name: str, models_dir: Path, data: str = "/data/demo",
                     values: tuple[float, float, float] = (10.0, 9.0, 11.0)) -> list[Path]:
    """A finished `recipe-search` whose trial 0 is the base settings; by default (validation
    ``values``) trial 1 is the best and trial 2 the worst. Returns the trials' run folders
    (empty: a test writes their predictions)."""
    import optuna
    from optuna.distributions import FloatDistribution

    from h2a.studies.presets import preset_raw
    from h2a.studies.storage import open_storage

    study = optuna.create_study(study_name=name, storage=open_storage(None), direction="minimize")
    for key, value in {"space": preset_raw("recipe-search"), "preset": "recipe-search", "kind": "search",
                       "task": "boneage", "metric": "mae", "direction": "minimize", "data": data,
                       "trial_minutes": 28.0, "pruner": "median", "trials": 3, "seed": 0}.items():
        study.set_user_attr(key, value)
    runs = []
    for i, (lr, value) in enumerate(zip((2e-3, 1e-3, 5e-3), values)):
        run = models_dir / f"{name}-t{i}"
        run.mkdir(parents=True, exist_ok=True)
        runs.append(run)
        attrs = {"run": str(run), **({"baseline": True} if i == 0 else {})}
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions={"lr": FloatDistribution(5e-4, 6e-3, log=True)},
                                                  value=value, user_attrs=attrs))
    return runs
