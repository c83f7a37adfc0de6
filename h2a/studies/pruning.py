"""Per-epoch reporting and pruning: how a training run talks to its Optuna trial.

A trial's run is an ordinary training run with one extra engine callback, ``TrialReporter``:
it reports each epoch's validation figure, and stops a run the pruner prunes after that
epoch (the run ends cleanly, saving its checkpoint and model; its ``stop_reason`` says
'pruned'). The pruners themselves are Optuna's, chosen by name.
"""

from __future__ import annotations

import math

import optuna

from h2a.engine.callbacks import CANCELLED, Callback
from h2a.studies.space import Space
from h2a.studies.tracking import nest_mlflow_run


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


def make_pruner(name: str, space: Space) -> optuna.pruners.BasePruner:
    """Median (after ``pruning.startup_trials`` finished trials, from epoch ``warmup_epochs + 1``)
    or Hyperband over epochs."""
    if name == "median":
        # epochs are reported from 1 and Optuna prunes from step n_warmup_steps on
        return optuna.pruners.MedianPruner(n_startup_trials=space.pruning["startup_trials"],
                                           n_warmup_steps=space.pruning["warmup_epochs"] + 1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=int(space.base.get("epochs", 10)),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()
