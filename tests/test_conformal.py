"""Conformal bone-age intervals: coverage on constructed data, Mondrian widths, the small-group
fallback, JSON round trip, and the run / evaluate / predict / calibrate plumbing on the tiny run."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from h2a.inference.conformal import MIN_GROUP, MondrianConformal, Procedure, conformal_quantile


def _data(seed: int, n: int, noisy_below: float = 96.0, sd_young: float = 15.0, sd_old: float = 5.0):
    """Predictions 40-220 months, true = prediction + normal noise, noisier below ``noisy_below``."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(40, 220, n)
    male = rng.random(n) < 0.5
    y = pred + rng.normal(0, np.where(pred < noisy_below, sd_young, sd_old))
    return pred, y, male


def _coverage(conf: MondrianConformal, pred, y, male) -> np.ndarray:
    lo, hi = conf.interval(pred, male)
    return (y >= lo) & (y <= hi)


def test_held_out_coverage_is_nominal_overall_and_per_group() -> None:
    covs, young, old = [], [], []
    for seed in range(40):
        pred, y, male = _data(seed, 3000)
        conf = MondrianConformal(0.95).fit(pred[:1000], y[:1000], male[:1000])
        inside = _coverage(conf, pred[1000:], y[1000:], male[1000:])
        covs.append(inside.mean())
        young.append(inside[pred[1000:] < 96].mean())
        old.append(inside[pred[1000:] >= 168].mean())
    assert np.mean(covs) == pytest.approx(0.95, abs=0.01)
    # Mondrian: the guarantee holds per group, not only on average
    assert np.mean(young) == pytest.approx(0.95, abs=0.015)
    assert np.mean(old) == pytest.approx(0.95, abs=0.015)
    # another level
    pred, y, male = _data(99, 20000)
    conf = MondrianConformal(0.8).fit(pred[:10000], y[:10000], male[:10000])
    assert _coverage(conf, pred[10000:], y[10000:], male[10000:]).mean() == pytest.approx(0.8, abs=0.02)


def test_pooled_interval_under_covers_the_noisy_group_mondrian_does_not() -> None:
    pred, y, male = _data(1, 8000)
    pooled = MondrianConformal(0.95, band_edges=(), by_sex=False).fit(pred[:4000], y[:4000], male[:4000])
    mondrian = MondrianConformal(0.95).fit(pred[:4000], y[:4000], male[:4000])
    test = slice(4000, None)
    young = pred[test] < 96
    assert _coverage(pooled, pred[test], y[test], male[test])[young].mean() < 0.90
    assert _coverage(mondrian, pred[test], y[test], male[test])[young].mean() > 0.92
    # the noisier group gets the wider interval, and near 1.96 SD of its noise
    w_young = mondrian.half_width([80.0], [True])[0]
    w_old = mondrian.half_width([150.0], [True])[0]
    assert w_young > 2 * w_old
    assert w_young == pytest.approx(1.96 * 15, rel=0.15) and w_old == pytest.approx(1.96 * 5, rel=0.15)


def test_group_comes_from_the_predicted_age_and_given_sex() -> None:
    pred, y, male = _data(2, 6000)
    conf = MondrianConformal().fit(pred, y, male)
    # the same prediction gets the same width whatever the truth turns out to be
    assert conf.groups_of([100.0], [False])[0] == "8-11 y|female"
    assert conf.groups_of([200.0], [True])[0] == ">= 14 y|male"
    assert conf.groups_of([95.9], [True])[0] == "< 8 y|male"
    assert conf.half_width([100.0], [False])[0] == conf.quantiles_["8-11 y|female"]


def test_small_groups_fall_back_to_the_band_then_to_all_images() -> None:
    rng = np.random.default_rng(3)
    # 200 images at 10-14 y of both sexes, 200 boys but only 30 girls at 14+ y, 20 children under 8 y
    pred = np.concatenate([rng.uniform(140, 160, 200), rng.uniform(170, 210, 230), rng.uniform(40, 90, 20)])
    male = np.concatenate([rng.random(200) < 0.5, np.arange(230) < 200, rng.random(20) < 0.5])
    y = pred + rng.normal(0, 8, len(pred))
    conf = MondrianConformal(min_group=MIN_GROUP).fit(pred, y, male)
    assert conf.group_sizes_[">= 14 y|female"] == 30
    assert conf.fallback_[">= 14 y|female"] == ">= 14 y"  # too few girls: the band pooled over sex
    assert conf.resolve(">= 14 y|male") == ">= 14 y|male"  # enough boys: their own quantile
    assert conf.fallback_["< 8 y"] == "all" and conf.resolve("< 8 y|male") == "all"  # too few in the band
    assert conf.half_width([60.0], [True])[0] == conf.quantiles_["all"]
    assert "uses" in conf.describe(">= 14 y|female")  # the text says a fallback was used


def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    s = np.arange(1, 101, dtype=float)  # 1..100
    assert conformal_quantile(s, 0.95) == 96.0  # ceil(101 * 0.95) = 96th smallest
    assert conformal_quantile(s[:10], 0.95) == 10.0  # rank beyond n: the largest (no guarantee)
    with pytest.raises(ValueError):
        MondrianConformal(1.5)


def test_json_round_trip_gives_the_same_intervals() -> None:
    pred, y, male = _data(4, 2000)
    conf = MondrianConformal(0.9).fit(pred, y, male)
    back = MondrianConformal.from_dict(json.loads(json.dumps(conf.to_dict())))
    t_pred, _, t_male = _data(5, 500)
    for a, b in zip(conf.interval(t_pred, t_male), back.interval(t_pred, t_male)):
        np.testing.assert_allclose(a, b)
    assert back.level == 0.9 and back.fallback_ == conf.fallback_
    assert Procedure.from_dict(Procedure(True, 64).to_dict()) == Procedure(True, 64)
    assert Procedure.for_predict(8) == Procedure(False, 7)
    with pytest.raises(RuntimeError):
        MondrianConformal().half_width([100.0], [True])


def test_cross_fit_coverage_is_honest() -> None:
    pred, y, male = _data(6, 3000)
    v = MondrianConformal().fit(pred, y, male).cross_fit_coverage(pred, y, male)
    assert v["n"] == 3000 and v["coverage"] == pytest.approx(0.95, abs=0.02)


# ---------------------------------------------------------------- the run, evaluate, predict, calibrate

def _calibrate_cli(*argv: str) -> int:
    """``h2a calibrate`` in-process through its own parser (registration lives in h2a.cli)."""
    from h2a.cli import calibrate

    parser = argparse.ArgumentParser()
    calibrate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibrate", *argv])
    return args.func(args)


def test_training_calibrates_with_the_predict_procedure(tiny_run: Path) -> None:
    from h2a.inference.calibration import DEFAULT_TTA
    from h2a.run import Run

    cal, meta = Run.at(tiny_run).calibration, Run.at(tiny_run).meta
    assert cal["task"] == "boneage"
    assert cal["procedure"] == {"flip_tta": False, "views": DEFAULT_TTA - 1, "seeding": "image"}
    assert cal["interval"]["n"] == len(meta["splits"]["validation"]) and cal["interval"]["level"] == 0.95
    assert meta["calibration"]["id"] == cal["id"] and "conformal" in meta["calibration"]["method"]
    assert 0 <= cal["validation_coverage"]["coverage"] <= 1


def test_evaluate_json_interval_keys_and_procedure_mismatch(tiny_run: Path, capsys) -> None:
    from h2a.cli import main

    assert main(["evaluate", "--model", str(tiny_run), "--split", "validation", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("interval_coverage", "interval_width_months", "coverage_by_age_bin", "n_by_age_bin",
                "interval_method", "interval_procedure_mismatch", "interval_legacy", "coverage_by_group"):
        assert key in out, key
    assert set(out["coverage_by_age_bin"]) == set(out["n_by_age_bin"]) == set(out["mae_by_age_bin"])
    assert 0 <= out["interval_coverage"] <= 1 and out["interval_width_months"] > 0
    im = out["interval_method"]
    assert "conformal" in im["method"] and im["level"] == 0.95 and im["procedure"]["views"] == 7
    assert out["interval_procedure_mismatch"] is True  # evaluated with the image alone, calibrated with 8 copies
    assert out["interval_in_sample"] is True  # the validation split is the calibration set
    assert main(["evaluate", "--model", str(tiny_run), "--split", "validation", "--tta-views", "7", "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["interval_procedure_mismatch"] is False
    assert same["interval_coverage"] >= 0.95  # in-sample, the finite-sample rank guarantees it


def test_calibrate_command_refits_for_another_procedure(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from h2a.run import read_json
    from h2a.inference.evaluate import evaluate

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    before = read_json(run / "calibration.json")
    assert _calibrate_cli("--model", str(run), "--tta", "--tta-views", "2", "--level", "0.8", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    after = read_json(run / "calibration.json")
    assert after["procedure"] == {"flip_tta": True, "views": 2, "seeding": "image"} and after["interval"]["level"] == 0.8
    assert after["id"] != before["id"] and summary["id"] == after["id"]
    assert read_json(run / "metadata.json")["calibration"]["id"] == after["id"]
    m = evaluate(run, split="validation", flip_tta=True, tta_views=2).metrics
    assert m["interval_procedure_mismatch"] is False and m["interval_method"]["level"] == 0.8
    assert _calibrate_cli("--model", str(run)) == 0  # the text summary, whichever interval method was chosen
    text = capsys.readouterr().out
    assert "girls: half-width" in text and "boys: half-width" in text and "validation coverage" in text
    from h2a.cli.common import CliError

    with pytest.raises(CliError, match="level"):
        _calibrate_cli("--model", str(run), "--level", "2")


def test_old_run_without_calibration_falls_back_and_says_so(tiny_run: Path, tmp_path: Path, files_png: Path) -> None:
    from h2a.inference.evaluate import evaluate
    from h2a.predict.predictor import Predictor

    run = tmp_path / "old-run"
    shutil.copytree(tiny_run, run)
    (run / "calibration.json").unlink()
    m = evaluate(run, split="validation").metrics
    assert m["interval_method"]["method"].startswith("legacy")
    assert m["interval_coverage"] == m["interval_legacy"]["interval_coverage"]
    r = Predictor(str(run)).predict_image(str(files_png), sex="female", tta=4)
    assert r.ok and r.interval_source in ("tta", "validation rmse")
    assert "legacy" in r.interval_method and "h2a calibrate" in r.interval_method  # says it is the old rule
    assert r.measured_coverage is None


@pytest.fixture(scope="module")
def files_png(tiny_run: Path, demo_dir: Path) -> Path:
    from h2a.data.datasets import load_dataset
    from h2a.run import read_json

    meta = read_json(tiny_run / "metadata.json")
    ds = load_dataset(demo_dir)
    rows = ds.meta[ds.meta["id"].astype(str).isin(set(meta["splits"]["validation"]))].sort_values("id")
    return Path(rows.iloc[0]["path"])


def test_predict_json_names_the_conformal_method(tiny_run: Path, files_png: Path, capsys) -> None:
    from h2a.cli import main
    from h2a.run import read_json

    assert main(["predict", "--model", str(tiny_run), str(files_png), "--sex", "male", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["interval_source"] == "conformal"
    cal = read_json(tiny_run / "calibration.json")
    from h2a.inference.conformal import conformal_from_dict

    conf = conformal_from_dict(cal["interval"])  # the method chosen on validation
    assert out["interval_method"].startswith(f"{cal['interval']['method']} 95%")
    assert out["interval_level"] == 0.95 and out["interval_procedure_mismatch"] is False
    lo, hi = out["interval_months"]
    half = conf.half_width([out["bone_age_months"]], [True])[0]
    assert hi - out["bone_age_months"] == pytest.approx(half, abs=0.02)
    assert out["measured_coverage"]["source"] in ("validation cross-fit", "held-out evaluation")
    assert "%" in out["measured_coverage"]["text"]
    assert main(["predict", "--model", str(tiny_run), str(files_png), "--sex", "male", "--tta", "3", "--json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["interval_procedure_mismatch"] is True and "approximate" in other["interval_method"]


def test_pdf_shows_interval_method_coverage_and_every_warning(tiny_run: Path, files_png: Path) -> None:
    import io

    from pypdf import PdfReader

    from h2a.predict.alerts import Alert, Code
    from h2a.predict.predictor import Predictor
    from h2a.predict.report import pdf_report

    r = Predictor(str(tiny_run)).predict_image(str(files_png), sex="female", tta=8)
    r.warnings = [Alert(Code.NOISE, f"warning number {i}") for i in range(11)]
    text = PdfReader(io.BytesIO(pdf_report(r))).pages[0].extract_text()
    assert "Interval method" in text and "split-conformal" in text
    assert "Measured coverage" in text and "validation" in text
    for i in range(11):
        assert f"warning number {i}" in text


def test_evaluation_page_shows_coverage_by_band(tiny_run: Path) -> None:
    from tests.conftest import open_page

    at = open_page("app_pages/evaluation.py")
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.label == "Interval coverage" for m in at.metric)
    assert any("coverage" in str(list(d.value.columns)) for d in at.dataframe)
