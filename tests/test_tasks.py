"""The Task objects: loss, target scaling, metrics, headline and output mapping per task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from h2a.inference.tasks import BoneAgeTask, SexTask, get_task, task_of_run


def test_get_task_and_unknown_name() -> None:
    assert isinstance(get_task("boneage"), BoneAgeTask) and isinstance(get_task("sex"), SexTask)
    with pytest.raises(ValueError, match="boneage, sex"):
        get_task("height")


def test_losses() -> None:
    bone = get_task("boneage")
    assert isinstance(bone.loss("l1"), nn.L1Loss) and isinstance(bone.loss("mse"), nn.MSELoss)
    huber = bone.loss("huber")
    assert isinstance(huber, nn.HuberLoss) and huber.delta == 1.0
    assert isinstance(get_task("sex").loss("mse"), nn.BCEWithLogitsLoss)  # the loss option is for regression
    assert float(get_task("sex").loss()(torch.zeros(2), torch.ones(2))) == pytest.approx(math.log(2))


def test_boneage_scaling_round_trip() -> None:
    y = np.array([60.0, 120.0, 180.0], dtype=np.float32)
    task = get_task("boneage").fit_scaling(y)
    assert task.mean == pytest.approx(120.0) and task.std == pytest.approx(float(y.std()))
    z = task.scale(y)
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-6
    np.testing.assert_allclose(task.to_output(z), y, rtol=1e-6)
    constant = get_task("boneage").fit_scaling(np.full(4, 100.0, dtype=np.float32))
    assert constant.std == 1.0  # never divide by zero


def test_sex_has_no_scaling_and_outputs_probabilities() -> None:
    task = get_task("sex").fit_scaling(np.array([0.0, 1.0, 1.0], dtype=np.float32))
    assert (task.mean, task.std) == (0.0, 1.0)
    np.testing.assert_allclose(task.to_output(np.array([0.0, 100.0, -100.0])), [0.5, 1.0, 0.0], atol=1e-9)
    male, age = np.array([1.0, 0.0], dtype=np.float32), np.array([50.0, 60.0], dtype=np.float32)
    assert task.target(male, age) is male and get_task("boneage").target(male, age) is age


def test_task_of_run_uses_the_saved_scaling() -> None:
    task = task_of_run({"task": "boneage", "target_mean": 100.0, "target_std": 20.0})
    assert float(task.to_output(np.array([1.0]))[0]) == 120.0
    assert task_of_run({"task": "sex"}).to_output(np.array([0.0]))[0] == 0.5


def test_boneage_metrics_score_and_headline() -> None:
    task = get_task("boneage", 100.0, 10.0)
    age = np.array([90.0, 100.0, 110.0, 120.0])
    male = np.array([1, 0, 1, 0], dtype=np.float32)
    raw = (age + np.array([2.0, -2.0, 2.0, -2.0]) - 100.0) / 10.0  # every error 2 months
    figures, score = task.epoch_metrics(raw, age, male)
    assert set(figures) == {"val_mae", "val_rmse", "val_within_12"} and score == pytest.approx(2.0)
    m = task.metrics(task.to_output(raw), age, male)
    assert m["task"] == "boneage" and m["mae_by_sex"]["female"] == pytest.approx(2.0)
    assert task.headline(m).startswith("validation MAE 2.00 months (predicting the mean: 10.00)")
    assert task.epoch_summary({"val_mae": 2.0}) == "val MAE 2.00 mo"
    preds = task.predictions(["a", "b", "c", "d"], age, male.astype(bool), task.to_output(raw))
    assert list(preds.columns[:2]) == ["id", "male"] and preds["error"].abs().tolist() == pytest.approx([2.0] * 4)


def test_sex_metrics_score_and_headline() -> None:
    task = get_task("sex")
    male = np.array([1, 1, 0, 0], dtype=np.float32)
    raw = np.array([3.0, 1.0, -2.0, 0.5])  # a girl called a boy (p 0.62), ranking still perfect
    figures, score = task.epoch_metrics(raw, np.array([50.0, 60, 70, 80]), male)
    assert figures["val_accuracy"] == 0.75 and figures["val_auc"] == 1.0 and score == -1.0
    m = task.metrics(task.to_output(raw), np.array([50.0, 60, 70, 80]), male)
    assert m["task"] == "sex" and "auc_by_age_band" in m
    assert task.headline(m) == "validation AUC 1.000"
    assert task.headline({"auc": None}) == "validation AUC n/a (one sex only)"
    one_sex, score = task.epoch_metrics(raw, np.zeros(4), np.ones(4, dtype=np.float32))
    assert math.isnan(one_sex["val_auc"]) and score == 0.0  # no AUC: never "improves"
    preds = task.predictions(["a", "b", "c", "d"], np.array([50.0, 60, 70, 80]), male.astype(bool), task.to_output(raw))
    assert preds.iloc[0]["id"] == "d" and not preds.iloc[0]["correct"]  # the mistake first
