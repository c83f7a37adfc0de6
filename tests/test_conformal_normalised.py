"""Normalised conformal: the width follows the error at the predicted age, chosen on validation."""

from __future__ import annotations

import json

import numpy as np

from h2a.inference.conformal import MondrianConformal, NormalisedConformal, choose_conformal, conformal_from_dict


def _children(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted ages 0-19 y; errors three times larger around 6 y than elsewhere (a
    minority of the '< 8 y' Mondrian band, as young children are in RSNA)."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 228, n)
    sd = 5.0 + 10.0 * np.exp(-0.5 * ((pred - 72.0) / 30.0) ** 2)
    return pred, np.clip(pred + rng.normal(0, sd), 0, None), rng.random(n) < 0.5


def _coverage(conf, pred, y, male, mask) -> float:
    lo, hi = conf.interval(pred, male)
    return float(((y >= lo) & (y <= hi))[mask].mean())


def test_width_follows_age_where_mondrian_bands_cannot() -> None:
    pred, y, male = _children(500, 0)
    tp, ty, tm = _children(40_000, 1)
    young = (tp >= 54) & (tp < 90)
    norm = NormalisedConformal(0.95, bandwidth=12).fit(pred, y, male)
    mond = MondrianConformal(0.95).fit(pred, y, male)
    assert _coverage(norm, tp, ty, tm, young) >= _coverage(mond, tp, ty, tm, young) + 0.02
    assert 0.92 <= _coverage(norm, tp, ty, tm, np.ones_like(young)) <= 0.975
    # Narrow where errors are small: well under the width around 6 y.
    assert norm.half_width([180.0])[0] < 0.6 * norm.half_width([72.0])[0]


def test_choice_rule_narrowest_that_reaches_the_floor_else_best_worst_band() -> None:
    pred, y, male = _children(500, 2)
    for floor in (0.0, 0.9, 1.01):
        conf, choice = choose_conformal(pred, y, male, 0.95, floor=floor, repeats=3)
        checks = choice["candidates"]
        assert len(checks) == 3 and choice["chosen"] == conf.grouping()
        chosen = next(c for c in checks if c["grouping"] == choice["chosen"])
        ok = [c for c in checks if c["worst_band"] >= floor]
        if ok:
            assert chosen["width_months"] == min(c["width_months"] for c in ok)
        else:
            assert chosen["worst_band"] == max(c["worst_band"] for c in checks)
        assert all(0.85 <= c["coverage"] <= 1.0 and c["repeats"] == 3 for c in checks)


def test_round_trip_through_json_gives_the_same_intervals() -> None:
    pred, y, male = _children(300, 4)
    for conf in (NormalisedConformal(0.9, 24).fit(pred, y, male), MondrianConformal(0.9).fit(pred, y, male)):
        back = conformal_from_dict(json.loads(json.dumps(conf.to_dict())))
        assert type(back) is type(conf)
        np.testing.assert_allclose(back.interval(pred, male), conf.interval(pred, male), atol=1e-3)
        assert back.describe() == conf.describe()
