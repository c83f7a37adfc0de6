"""Bland-Altman agreement: one definition in h2a.inference.metrics, reported by
``regression_metrics`` (so by ``h2a evaluate --json``) and read by the Evaluation page."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from h2a.inference.metrics import LOA_Z, bland_altman, regression_metrics


def test_bland_altman_on_hand_checked_numbers() -> None:
    # differences pred - y = [2, -2, 3, 1]: mean 1, squared deviations 1+9+4+0 = 14, SD sqrt(14/3)
    ba = bland_altman([10, 20, 30, 40], [12, 18, 33, 41])
    sd = math.sqrt(14 / 3)
    assert ba["n"] == 4 and ba["bias"] == pytest.approx(1.0) and ba["sd"] == pytest.approx(sd)
    assert ba["loa_low"] == pytest.approx(1.0 - 1.96 * sd) and ba["loa_high"] == pytest.approx(1.0 + 1.96 * sd)
    assert ba["loa_low"] == pytest.approx(-3.2341, abs=1e-4) and ba["loa_high"] == pytest.approx(5.2341, abs=1e-4)
    assert ba["z"] == LOA_Z == 1.96


def test_bland_altman_edge_cases() -> None:
    one = bland_altman([10], [13])
    assert one == {"n": 1, "bias": 3.0, "sd": None, "loa_low": None, "loa_high": None, "z": LOA_Z}
    empty = bland_altman([], [])
    assert empty["n"] == 0 and empty["bias"] is None and empty["sd"] is None
    exact = bland_altman([1, 2, 3], [1, 2, 3])
    assert exact["bias"] == 0 and exact["sd"] == 0 and exact["loa_low"] == exact["loa_high"] == 0
    nan = bland_altman([1, 2, np.nan], [2, 3, 4])  # a missing value is left out, not propagated
    assert nan["n"] == 2 and nan["bias"] == pytest.approx(1.0)


def test_regression_metrics_carry_the_limits_and_agree_with_the_bias() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 228, 500)
    pred = y + rng.normal(2.0, 8.0, 500)
    m = regression_metrics(y, pred, rng.random(500) < 0.5)
    ba = m["bland_altman"]
    assert ba["bias"] == pytest.approx(m["bias"]) and ba["n"] == m["n"] == 500
    assert ba["sd"] == pytest.approx(np.std(pred - y, ddof=1))
    inside = np.mean((pred - y >= ba["loa_low"]) & (pred - y <= ba["loa_high"]))
    assert 0.92 < inside < 0.98  # ~95% of normal errors inside the limits
    json.dumps(m)  # JSON-ready, as `h2a evaluate --json` prints it


def test_evaluate_json_reports_bland_altman(tiny_run, capsys) -> None:
    from h2a.cli import main
    from h2a.inference.evaluate import evaluate

    assert main(["evaluate", "--model", str(tiny_run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ba = out["bland_altman"]
    assert set(ba) >= {"n", "bias", "sd", "loa_low", "loa_high"} and ba["n"] == out["n"]
    preds = evaluate(tiny_run).predictions
    assert ba["bias"] == pytest.approx(preds["error"].mean(), abs=1e-6)
    assert ba["loa_high"] == pytest.approx(preds["error"].mean() + 1.96 * preds["error"].std(), abs=1e-6)
    assert main(["evaluate", "--model", str(tiny_run)]) == 0  # the text form names the limits too
    assert "limits of agreement" in capsys.readouterr().out
