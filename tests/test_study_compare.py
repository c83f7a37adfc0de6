"""The paired bootstrap behind every "does X help?" answer, on constructed predictions whose
true difference is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from h2a.studies.compare import arm_comparisons, paired_bootstrap, weighted_auc

N = 1101  # the held-out size of the RSNA thumbnails' comparisons


def _ages(seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).uniform(6, 228, n)


def test_a_known_shift_is_detected_and_its_ci_covers_it() -> None:
    rng = np.random.default_rng(1)
    y = _ages()
    base = rng.normal(0, 6, N)
    pred_b = y + base
    pred_a = y + np.sign(base) * (np.abs(base) + 2.0)  # every absolute error 2 months larger
    truth = np.mean(np.abs(pred_a - y)) - np.mean(np.abs(pred_b - y))
    assert truth == pytest.approx(2.0)
    res = paired_bootstrap(y, pred_a, pred_b, "mae", n_boot=2000, seed=0)
    assert res["difference"] == pytest.approx(2.0)
    assert res["ci_low"] <= 2.0 <= res["ci_high"]
    assert res["significant"] and res["ci_low"] > 0 and res["p_value"] < 0.01
    assert res["n"] == N and res["n_boot"] == 2000


def test_a_noisy_shift_is_covered_at_about_the_nominal_rate() -> None:
    """The interval is for the difference itself: over many data sets, the true difference
    (1 month of extra noise-driven error) falls inside the 95% CI most of the time."""
    hits = 0
    for rep in range(40):
        rng = np.random.default_rng(100 + rep)
        y = _ages(rep, 400)
        err_b = rng.normal(0, 6, 400)
        extra = rng.exponential(1.0, 400)  # mean 1 month more absolute error in A
        pred_a = y + np.sign(err_b) * (np.abs(err_b) + extra)
        res = paired_bootstrap(y, pred_a, y + err_b, n_boot=500, seed=rep)
        hits += res["ci_low"] <= 1.0 <= res["ci_high"]
    assert hits >= 33  # 95% nominal; 33/40 leaves room for the bootstrap's small-sample optimism


def test_identical_predictions_give_a_ci_around_zero_not_significant() -> None:
    rng = np.random.default_rng(2)
    y = _ages()
    pred = y + rng.normal(0, 8, N)
    res = paired_bootstrap(y, pred, pred.copy())
    assert res["difference"] == 0 and res["ci_low"] == 0 and res["ci_high"] == 0
    assert not res["significant"] and res["p_value"] == 1.0

    # two equally good but different models: the CI straddles 0
    other = y + rng.normal(0, 8, N)
    res = paired_bootstrap(y, pred, other)
    assert res["ci_low"] < 0 < res["ci_high"] and not res["significant"]


def test_the_pairing_narrows_the_interval() -> None:
    """Correlated errors (the same hard images) make the paired CI much narrower than the
    spread of either MAE: the reason to pair at all."""
    rng = np.random.default_rng(3)
    y = _ages()
    hard = rng.normal(0, 10, N)
    a = y + hard + rng.normal(0, 1, N)
    b = y + hard + rng.normal(0, 1, N)
    res = paired_bootstrap(y, a, b)
    single = np.std([np.mean(np.abs(a - y)[rng.integers(0, N, N)]) for _ in range(300)])
    assert (res["ci_high"] - res["ci_low"]) < 2 * 1.96 * single / 3


def test_auc_difference_and_weighted_auc_match_sklearn() -> None:
    rng = np.random.default_rng(4)
    sex = (rng.random(N) < 0.5).astype(int)
    good = np.clip(0.5 + (sex - 0.5) * 0.5 + rng.normal(0, 0.25, N), 0, 1).round(2)  # ties on purpose
    weak = np.clip(0.5 + (sex - 0.5) * 0.1 + rng.normal(0, 0.25, N), 0, 1)
    idx = rng.integers(0, N, (6, N))
    counts = np.stack([np.bincount(i, minlength=N) for i in idx]).astype(np.float32)
    expect = [roc_auc_score(sex[i], good[i]) for i in idx]
    np.testing.assert_allclose(weighted_auc(sex, good, counts), expect, atol=1e-12)

    res = paired_bootstrap(sex, good, weak, "auc")
    assert res["value_a"] == pytest.approx(roc_auc_score(sex, good))
    assert res["value_b"] == pytest.approx(roc_auc_score(sex, weak))
    assert res["difference"] > 0 and res["significant"] and res["ci_low"] > 0
    assert res["ci_low"] <= res["difference"] <= res["ci_high"]

    same = paired_bootstrap(sex, good, good, "auc")
    assert same["ci_low"] == same["ci_high"] == 0 and not same["significant"]


def test_auc_skips_resamples_with_one_class() -> None:
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    a = np.linspace(0.9, 0.1, 8)
    b = np.linspace(0.1, 0.9, 8)
    res = paired_bootstrap(y, a, b, "auc", n_boot=500, seed=0)
    # a resample without the single male happens with probability (7/8)^8 = 34%
    assert 200 < res["n_boot"] < 450
    assert res["difference"] == pytest.approx(1.0)


def test_bad_input_is_a_clear_error() -> None:
    y = _ages(0, 10)
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap(y, y, y[:5])
    with pytest.raises(ValueError, match="metric"):
        paired_bootstrap(y, y, y, "rmse")
    with pytest.raises(ValueError, match="both sexes"):
        paired_bootstrap(np.ones(10), np.ones(10), np.zeros(10), "auc")


def _frame(ids, y, pred, col: str = "pred") -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "y": y, col: pred})


def test_arms_are_paired_by_id_when_their_id_sets_differ() -> None:
    rng = np.random.default_rng(5)
    ids = np.array([f"img{i:04d}" for i in range(N)])
    y = _ages()
    err = rng.normal(0, 6, N)
    ref = _frame(ids, y, y + err)
    # the arm saw 900 of the images (another split), listed in another order, with 3 months
    # more absolute error on each; plus 50 images the reference never saw
    keep = rng.permutation(N)[:900]
    arm = _frame(ids[keep], y[keep], y[keep] + np.sign(err[keep]) * (np.abs(err[keep]) + 3))
    extra = _frame([f"new{i}" for i in range(50)], _ages(9, 50), _ages(9, 50) + 40)  # huge errors, unpaired
    arm = pd.concat([arm, extra], ignore_index=True)
    [row] = arm_comparisons({"with-sex": [ref], "without-sex": [arm]}, reference="with-sex")
    assert row["arm"] == "without-sex" and row["reference"] == "with-sex" and row["metric"] == "mae"
    assert row["n_images"] == 900
    assert row["difference"] == pytest.approx(3.0)  # the unpaired 50 are left out, not averaged in
    assert row["ci_low"] <= 3.0 <= row["ci_high"] and row["significant"]
    assert row["n_seeds_arm"] == row["n_seeds_reference"] == 1
    assert row["verdict"].startswith("without-sex is 3.0 months worse than with-sex (95% CI ")
    assert row["verdict"].endswith("a real difference on these 900 images")


def test_several_seeds_are_averaged_per_image() -> None:
    ids = [f"i{i}" for i in range(300)]
    y = _ages(1, 300)
    ref = _frame(ids, y, y + 5.0)  # always 5 months high
    # two seeds, +8 and -8 months off: each alone has MAE 8, their average is exact
    seeds = [_frame(ids, y, y + 8.0), _frame(ids[::-1], y[::-1], y[::-1] - 8.0)]
    [row] = arm_comparisons({"ref": [ref], "ensemble": seeds}, "ref")
    assert row["n_seeds_arm"] == 2 and row["value_arm"] == pytest.approx(0.0)
    assert row["difference"] == pytest.approx(-5.0) and row["significant"]
    assert "averaged over 2 seed(s)" in row["seeds"]
    assert "ensemble is 5.0 months better than ref" in row["verdict"]
    assert "averaged over 2 and 1 seeds" in row["verdict"]


def test_an_arm_that_cannot_be_compared_says_why() -> None:
    y = _ages(0, 50)
    ref = _frame([f"a{i}" for i in range(50)], y, y + 1)
    other = _frame([f"b{i}" for i in range(50)], y, y + 1)
    rows = arm_comparisons({"ref": [ref], "disjoint": [other], "empty": [], "sex": [_frame(other["id"], y, y, "prob")]},
                           "ref")
    by = {r["arm"]: r for r in rows}
    assert by["disjoint"]["n_images"] == 0 and "no held-out images in common" in by["disjoint"]["verdict"]
    assert "without finished runs" in by["empty"]["verdict"] and by["empty"]["difference"] is None
    assert "pred" in by["sex"]["error"]
    with pytest.raises(ValueError, match="reference arm"):
        arm_comparisons({"a": [ref]}, "missing")


def test_auc_arms_compare_sex_runs() -> None:
    rng = np.random.default_rng(7)
    ids = [f"s{i}" for i in range(600)]
    sex = (rng.random(600) < 0.5).astype(int)
    good = np.clip(0.5 + (sex - 0.5) * 0.6 + rng.normal(0, 0.2, 600), 0, 1)
    chance = rng.random(600)
    [row] = arm_comparisons({"imagenet": [_frame(ids, sex, good, "prob")],
                             "random-init": [_frame(ids, sex, chance, "prob")]}, "imagenet", metric="auc")
    assert row["metric"] == "auc" and row["difference"] < 0 and row["significant"]
    assert row["verdict"].startswith("random-init is worse than imagenet by 0.")
    assert "AUC (95% CI -0." in row["verdict"]
