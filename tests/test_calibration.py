"""Temperature scaling of the sex classifier: it lowers the calibration error of over-confident
logits without changing their order, survives JSON, and a sex run carries it end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from h2a.inference.calibration import TemperatureScaler, expected_calibration_error


def _overconfident(seed: int, n: int, scale: float = 4.0, shift: float = 0.0):
    """Labels drawn from sigmoid(z); the model reports scale * z (+ shift): over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return scale * z + shift, y


def test_temperature_scaling_reduces_ece_and_keeps_auc() -> None:
    logits, y = _overconfident(0, 4000)
    scaler = TemperatureScaler().fit(logits[:2000], y[:2000])
    assert scaler.temperature_ == pytest.approx(4.0, rel=0.2)  # recovers the over-confidence factor
    raw = 1 / (1 + np.exp(-logits[2000:]))
    cal = scaler.predict_proba(logits[2000:])
    before, after = expected_calibration_error(y[2000:], raw), expected_calibration_error(y[2000:], cal)
    assert before > 0.08 and after < 0.04 and after < before / 2
    assert roc_auc_score(y[2000:], cal) == pytest.approx(roc_auc_score(y[2000:], raw), abs=1e-12)
    assert ((cal >= 0.5) == (raw >= 0.5)).all()  # no shift: the 0.5 decisions are unchanged


def test_logit_shift_fixes_a_classifier_that_leans_one_way() -> None:
    logits, y = _overconfident(1, 6000, scale=1.0, shift=-1.5)  # too many called girls
    plain = TemperatureScaler().fit(logits[:3000], y[:3000])
    shifted = TemperatureScaler(shift=True).fit(logits[:3000], y[:3000])
    assert shifted.shift_ == pytest.approx(1.5, abs=0.25)
    e_plain = expected_calibration_error(y[3000:], plain.predict_proba(logits[3000:]))
    e_shift = expected_calibration_error(y[3000:], shifted.predict_proba(logits[3000:]))
    assert e_shift < 0.04 < e_plain


def test_sex_runs_fit_the_offset_by_default_in_training_and_h2a_calibrate() -> None:
    """A temperature alone left the recipe's held-out ECE at 0.12; the end of training and
    ``h2a calibrate`` both fit the offset unless told not to."""
    from h2a.cli import build_parser
    from h2a.inference.tasks import SexTask
    from h2a.inference.conformal import Procedure

    logits, y = _overconfident(3, 3000, scale=1.0, shift=-1.5)
    cal = SexTask().calibrate(logits, np.zeros(len(y)), y.astype(bool), Procedure(True, 0))
    assert cal["temperature"]["shift"] and cal["temperature"]["logit_shift"] == pytest.approx(1.5, abs=0.3)
    plain = SexTask().calibrate(logits, np.zeros(len(y)), y.astype(bool), Procedure(True, 0), shift=False)
    assert plain["temperature"]["logit_shift"] == 0.0
    assert build_parser().parse_args(["calibrate", "--model", "r"]).logit_shift is True
    assert build_parser().parse_args(["calibrate", "--model", "r", "--no-logit-shift"]).logit_shift is False


def test_scaler_json_round_trip_and_unfitted_error() -> None:
    logits, y = _overconfident(2, 1000)
    s = TemperatureScaler(shift=True).fit(logits, y)
    back = TemperatureScaler.from_dict(json.loads(json.dumps(s.to_dict())))
    np.testing.assert_allclose(back.predict_proba(logits), s.predict_proba(logits))
    with pytest.raises(RuntimeError):
        TemperatureScaler().transform(logits)


def test_ece_uses_15_bins_and_is_zero_for_a_perfect_model() -> None:
    y = np.array([0, 1] * 50)
    assert expected_calibration_error(y, y.astype(float)) == 0.0
    assert expected_calibration_error(y, np.full(100, 0.5)) == 0.0
    assert expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)


def test_sex_run_is_calibrated_and_evaluate_reports_both_eces(demo_dir: Path, workspace: Path, capsys) -> None:
    from h2a.cli import main
    from h2a.run import read_json
    from h2a.inference.evaluate import evaluate
    from h2a.inference.loading import load_run
    from tests.test_sex import make_sex_run

    run = make_sex_run(demo_dir, workspace)
    cal = read_json(run / "calibration.json")
    assert cal["task"] == "sex" and cal["temperature"]["temperature"] > 0
    assert read_json(run / "metadata.json")["calibration"]["method"].startswith("temperature scaling")
    loaded = load_run(run)
    raw = np.linspace(-3, 3, 7)
    t, b = cal["temperature"]["temperature"], cal["temperature"]["logit_shift"]
    assert cal["temperature"]["shift"]  # the offset is fitted by default
    np.testing.assert_allclose(loaded.to_output(raw), 1 / (1 + np.exp(-(raw / t + b))))
    np.testing.assert_allclose(loaded.to_output(raw, calibrated=False), 1 / (1 + np.exp(-raw)))

    assert main(["evaluate", "--model", str(run), "--split", "validation", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"ece", "ece_uncalibrated", "calibration"} <= set(out)
    assert 0 <= out["ece"] <= 1 and 0 <= out["ece_uncalibrated"] <= 1
    res = evaluate(run, split="validation")
    assert "p_male_raw" in res.predictions
    assert roc_auc_score(res.predictions["male"], res.predictions["p_male"]) == pytest.approx(
        roc_auc_score(res.predictions["male"], res.predictions["p_male_raw"]))
