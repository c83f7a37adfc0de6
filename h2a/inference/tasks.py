"""What differs between the two tasks, in one object each instead of ``if task == ...`` branches.

A ``Task`` owns the loss, the target scaling (bone age is standardised with the training
set's mean and std so one learning rate suits every architecture; sex is a logit and needs
none), the metrics, the one-line headline and the mapping from the model's raw scalar to
what a person reads (months or P(male)). Training, evaluation and loading a run all ask
the same object, so the two can never disagree on how a number is scaled.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from torch import nn

from h2a import HEADLINE, TASKS
from h2a.inference.calibration import SEX_LOGIT_SHIFT, TemperatureScaler, boneage_calibration, sex_calibration
from h2a.inference.conformal import DEFAULT_LEVEL, Procedure
from h2a.inference.metrics import (
    classification_metrics,
    predictions_frame,
    regression_metrics,
)



class Task:
    """Base: identity scaling; subclasses fill in loss, output mapping and metrics."""

    name: ClassVar[str] = ""
    # The figure runs are ranked by: its metrics key, the history key of its per-epoch
    # value, a label for charts and tables, and which way is better.
    headline_key: ClassVar[str] = ""
    epoch_key: ClassVar[str] = ""
    headline_label: ClassVar[str] = ""
    lower_is_better: ClassVar[bool] = True

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        self.mean = float(mean)
        self.std = float(std)

    # ---- data
    def labelled(self, ds) -> pd.DataFrame:
        """The dataset rows this task can learn from (they need its label)."""
        raise NotImplementedError

    def target(self, male: np.ndarray, age: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # ---- scaling
    def fit_scaling(self, y: np.ndarray) -> Task:
        """Learn the target scaling from the training targets (a no-op where none is used)."""
        return self

    def scale(self, y: np.ndarray) -> np.ndarray:
        return (y - self.mean) / self.std

    def to_output(self, raw: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Raw model scalars -> what a person reads; ``calibrated=False`` skips a fitted
        calibration (the sex run's temperature), to compare with the raw probabilities."""
        raise NotImplementedError

    # ---- calibration (end of training, ``h2a calibrate``)
    def calibrate(self, raw: np.ndarray, age: np.ndarray, male: np.ndarray, procedure: Procedure,
                  level: float = DEFAULT_LEVEL, **options) -> dict:
        """calibration.json content fitted on the validation split's raw outputs, which must come
        from ``procedure``: the one the calibration will be used with."""
        raise NotImplementedError

    # ---- loss and metrics
    def loss(self, kind: str = "l1") -> nn.Module:
        raise NotImplementedError

    def metrics(self, out: np.ndarray, age: np.ndarray, male: np.ndarray) -> dict:
        """The full metrics of a finished run or an evaluation, on outputs (not raw scalars)."""
        raise NotImplementedError

    def epoch_metrics(self, raw: np.ndarray, age: np.ndarray, male: np.ndarray) -> tuple[dict, float]:
        """The few figures an epoch's history records, and a score where lower is better."""
        raise NotImplementedError

    def predictions(self, ids, age: np.ndarray, male: np.ndarray, out: np.ndarray) -> pd.DataFrame:
        raise NotImplementedError

    def headline(self, metrics: dict) -> str:
        raise NotImplementedError

    def epoch_summary(self, record: dict) -> str:
        raise NotImplementedError


class BoneAgeTask(Task):
    """Regression in months, learnt on standardised targets."""

    name = "boneage"
    (headline_key, lower_is_better), epoch_key, headline_label = HEADLINE["boneage"], "val_mae", "validation MAE (months)"

    def labelled(self, ds) -> pd.DataFrame:
        return ds.labelled()

    def target(self, male: np.ndarray, age: np.ndarray) -> np.ndarray:
        return age

    def fit_scaling(self, y: np.ndarray) -> Task:
        self.mean = float(y.mean())
        self.std = float(y.std() or 1.0)
        return self

    def to_output(self, raw: np.ndarray, calibrated: bool = True) -> np.ndarray:
        return raw * self.std + self.mean

    def calibrate(self, raw: np.ndarray, age: np.ndarray, male: np.ndarray, procedure: Procedure,
                  level: float = DEFAULT_LEVEL, **options) -> dict:
        """Mondrian split-conformal intervals (h2a.inference.conformal)."""
        return boneage_calibration(self.to_output(raw), age, np.asarray(male).astype(bool), procedure, level)

    def loss(self, kind: str = "l1") -> nn.Module:
        return {"l1": nn.L1Loss(), "mse": nn.MSELoss(), "huber": nn.HuberLoss(delta=1.0)}[kind]

    def metrics(self, out: np.ndarray, age: np.ndarray, male: np.ndarray) -> dict:
        return regression_metrics(age, out, np.asarray(male).astype(bool))

    def epoch_metrics(self, raw: np.ndarray, age: np.ndarray, male: np.ndarray) -> tuple[dict, float]:
        m = self.metrics(self.to_output(raw), age, male)
        return {"val_mae": m["mae"], "val_rmse": m["rmse"], "val_within_12": m["within_12_months"]}, m["mae"]

    def predictions(self, ids, age: np.ndarray, male: np.ndarray, out: np.ndarray) -> pd.DataFrame:
        return predictions_frame(ids, age, out, male, "boneage")

    def headline(self, metrics: dict) -> str:
        return (f"validation MAE {metrics['mae']:.2f} months "
                f"(predicting the mean: {metrics['mae_baseline_mean']:.2f})")

    def epoch_summary(self, record: dict) -> str:
        return f"val MAE {record['val_mae']:.2f} mo"


class SexTask(Task):
    """Binary classification from the image alone; the model's scalar is a logit."""

    name = "sex"
    (headline_key, lower_is_better), epoch_key, headline_label = HEADLINE["sex"], "val_auc", "validation AUC"

    def labelled(self, ds) -> pd.DataFrame:
        images = ds.with_images()
        return images[images["male"].notna()]

    def target(self, male: np.ndarray, age: np.ndarray) -> np.ndarray:
        return male

    def __init__(self, mean: float = 0.0, std: float = 1.0, scaler: TemperatureScaler | None = None) -> None:
        super().__init__(mean, std)
        self.scaler = scaler  # fitted temperature scaling, applied by to_output

    def to_output(self, raw: np.ndarray, calibrated: bool = True) -> np.ndarray:
        if calibrated and self.scaler is not None:
            return self.scaler.predict_proba(raw)
        return 1 / (1 + np.exp(-np.asarray(raw, float)))

    def calibrate(self, raw: np.ndarray, age: np.ndarray, male: np.ndarray, procedure: Procedure,
                  level: float = DEFAULT_LEVEL, **options) -> dict:
        """Temperature scaling of the logit, with an offset unless ``shift=False``."""
        return sex_calibration(raw, np.asarray(male).astype(bool), procedure,
                               bool(options.get("shift", SEX_LOGIT_SHIFT)))

    def loss(self, kind: str = "l1") -> nn.Module:
        return nn.BCEWithLogitsLoss()

    def metrics(self, out: np.ndarray, age: np.ndarray, male: np.ndarray) -> dict:
        return classification_metrics(np.asarray(male).astype(int), out, age)

    def epoch_metrics(self, raw: np.ndarray, age: np.ndarray, male: np.ndarray) -> tuple[dict, float]:
        # Per-band AUCs are for the final report; an epoch only needs the two figures.
        m = classification_metrics(male, self.to_output(raw))
        auc = m["auc"] if m["auc"] is not None else float("nan")
        return {"val_accuracy": m["accuracy"], "val_auc": auc}, -(m["auc"] or 0.0)

    def predictions(self, ids, age: np.ndarray, male: np.ndarray, out: np.ndarray) -> pd.DataFrame:
        return predictions_frame(ids, male, out, male, "sex", boneage=age)

    def headline(self, metrics: dict) -> str:
        if metrics.get("auc") is None:
            return "validation AUC n/a (one sex only)"
        return f"validation AUC {metrics['auc']:.3f}"

    def epoch_summary(self, record: dict) -> str:
        return f"val AUC {record['val_auc']:.3f}"


_TASKS: dict[str, type[Task]] = {"boneage": BoneAgeTask, "sex": SexTask}


def get_task(name: str, mean: float = 0.0, std: float = 1.0) -> Task:
    """The task object for a config's or a run's ``task`` name."""
    try:
        return _TASKS[name](mean, std)
    except KeyError:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {name!r}") from None


def task_of_run(meta: dict, calibration: dict | None = None) -> Task:
    """A finished run's task with the scaling it was trained with (from metadata.json) and,
    for a sex run, the temperature scaling in its ``calibration`` (calibration.json)."""
    task = get_task(meta["task"], meta.get("target_mean", 0.0), meta.get("target_std", 1.0))
    if isinstance(task, SexTask) and calibration and "temperature" in calibration:
        task.scaler = TemperatureScaler.from_dict(calibration["temperature"])
    return task
