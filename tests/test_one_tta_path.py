"""Prediction, evaluation and calibration share one test-time path (``h2a.inference.arrays``):
the same image under the same procedure gets the same estimate and the same interval on the
Predict page / ``h2a predict`` as in ``h2a evaluate``, so an interval is applied with exactly
the procedure it was fitted for."""

from __future__ import annotations

import numpy as np
import pytest

from h2a.data.datasets import load_dataset
from h2a.data.preprocess import PreprocessConfig
from h2a.inference.arrays import predict_arrays, tta_views
from h2a.inference.conformal import Procedure
from h2a.inference.evaluate import evaluate
from h2a.predict.predictor import Predictor


@pytest.fixture(scope="module")
def validation(tiny_run, one_torch_thread):
    return evaluate(tiny_run, split="validation", tta_views=7, record=False)


def test_predict_and_evaluate_give_the_same_numbers(tiny_run, demo_dir, validation):
    preds = validation.predictions.set_index(validation.predictions["id"].astype(str))
    ds = load_dataset(demo_dir)
    pred = Predictor(tiny_run, site="none")
    for image_id in list(preds.index[:4]):
        row = preds.loc[image_id]
        res = pred.predict_image(ds.path_of(image_id), sex="male" if row["male"] else "female", tta=8)
        assert res.ok, res.error
        assert res.tta == 8
        assert res.bone_age_months == pytest.approx(row["predicted"], abs=1e-3), image_id
        assert res.interval_months[0] == pytest.approx(row["interval_low"], abs=1e-3)
        assert res.interval_months[1] == pytest.approx(row["interval_high"], abs=1e-3)


def test_an_image_gets_the_same_copies_wherever_it_sits():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (48, 48), dtype=np.uint8) for _ in range(2))
    cfg = PreprocessConfig(size=48, shift=0.1, rotation=10)
    proc = Procedure(True, 3)
    views = tta_views(a, proc, cfg)
    assert views.shape == (5, 48, 48)
    assert np.array_equal(views[0], a) and np.array_equal(views[1], a[:, ::-1])
    assert not np.array_equal(views[2], views[3])  # the copies differ from each other ...
    assert np.array_equal(views, tta_views(a, proc, cfg))  # ... and are the same on every call
    assert np.array_equal(tta_views(b, proc, cfg)[0], b)


def test_the_batch_does_not_change_an_images_estimate(tiny_run, validation):
    """Row 0 alone and row 0 among others: the same copies, the same mean."""
    run = validation.run
    images = validation.cache.take(validation.rows[:6])
    male = np.ones(6, np.float32)
    together = predict_arrays(run.model, images, male, run.norm, run.device, flip_tta=True,
                              augment=run.preprocess, views=5)
    alone = predict_arrays(run.model, images[3:4], male[3:4], run.norm, run.device, flip_tta=True,
                           augment=run.preprocess, views=5)
    assert alone[0] == pytest.approx(together[3], abs=1e-5)


def test_old_calibrations_load_with_their_procedure_stated():
    old = Procedure.from_dict({"flip_tta": False, "views": 7})  # written before seeding was recorded
    assert old == Procedure.for_predict(8)  # the same expected error: still the predict procedure
    assert "seeded by row" in old.describe()
    assert "seeded" not in Procedure.for_predict(8).describe()
    assert Procedure.from_dict(Procedure.for_predict(8).to_dict()).seeding == "image"
