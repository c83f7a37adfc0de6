"""The OOD reject option: a threshold calibrated on the run's validation distances, stored with the run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from h2a.predict import ood
from h2a.predict.alerts import Code
from h2a.predict.ood import (
    OOD_FILE,
    OOD_K,
    OOD_QUANTILE,
    calibrate_threshold,
    knn_mean,
    load_ood_reference,
    ood_alert,
    pairwise_distances,
    reference_from_embeddings,
)

D = 32


def _cloud(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """n embeddings from one Gaussian (an 'in-distribution' source); ``shift`` moves the mean."""
    return (np.random.default_rng(seed).normal(0.0, 1.0, (n, D)) + shift).astype(np.float32)


def test_conformal_threshold_is_the_right_order_statistic() -> None:
    d = np.arange(1, 200, dtype=float)[::-1]  # 199 distances, given unsorted
    assert calibrate_threshold(d, 0.99) == 198.0  # ceil(200 * 0.99) = 198th smallest
    assert calibrate_threshold(d, 0.5) == 100.0
    assert calibrate_threshold(np.array([3.0, 1.0]), 0.99) == 3.0  # too few: the largest
    assert calibrate_threshold(np.zeros(10), 0.99) == pytest.approx(1e-6)  # never zero
    with pytest.raises(ValueError):
        calibrate_threshold(np.zeros(0))


def test_threshold_comes_from_the_validation_distances() -> None:
    train, val = _cloud(400, 0), _cloud(300, 1)
    ref = reference_from_embeddings(train, val)
    assert ref.calibrated_on == "validation" and ref.quantile == OOD_QUANTILE
    zv = (val - ref.mu) / ref.sd
    expected = knn_mean(pairwise_distances(zv, ref.train), OOD_K)
    np.testing.assert_allclose(ref.val_distances, expected, rtol=1e-5)
    assert ref.threshold == pytest.approx(calibrate_threshold(expected, OOD_QUANTILE))
    # a farther validation set moves the threshold: it is derived, not a constant
    wider = reference_from_embeddings(train, _cloud(300, 1) * 1.5)
    assert wider.threshold > ref.threshold * 1.2


def test_in_distribution_flag_rate_within_budget_and_shifted_images_flagged() -> None:
    ref = reference_from_embeddings(_cloud(500, 0), _cloud(500, 1))
    fresh = _cloud(1000, 2)
    scores = np.array([ref.score(e) for e in fresh])
    assert (scores > 1.0).mean() <= 0.02  # the budget for real held-out hands
    far = _cloud(50, 3, shift=3.0)
    assert all(ref.score(e) > 1.0 for e in far)


def test_without_validation_images_the_training_leave_one_out_calibrates() -> None:
    ref = reference_from_embeddings(_cloud(200, 0), None)
    assert ref.calibrated_on == "training leave-one-out" and len(ref.val_distances) == 200
    few = reference_from_embeddings(_cloud(200, 0), _cloud(5, 1))  # too few to calibrate on
    assert few.calibrated_on == "training leave-one-out"


def test_reference_file_keeps_threshold_and_calibration(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")
    ref = reference_from_embeddings(_cloud(100, 0), _cloud(60, 1))
    monkeypatch.setattr(ood, "build_ood_reference", lambda run: ref)
    run = SimpleNamespace(path=tmp_path)
    load_ood_reference(run)
    assert (tmp_path / OOD_FILE).exists()
    back = load_ood_reference(run, build=False)
    assert back is not None and back.threshold == pytest.approx(ref.threshold)
    assert back.quantile == ref.quantile and back.calibrated_on == "validation"
    np.testing.assert_allclose(back.val_distances, ref.val_distances)


def test_ood_alert_code() -> None:
    assert ood_alert(0.99) is None
    alert = ood_alert(1.5)
    assert alert is not None and alert.code == Code.OUT_OF_DISTRIBUTION
    assert alert.to_dict()["code"] == "out_of_distribution"
