"""Sex classification: a run trains through the shared engine on demo and real data, its
evaluate JSON is sane, and the analysis helpers (bootstrap AUC, calibration, summary)
compute what they claim."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from h2a.data.preprocess import PreprocessConfig
from h2a.run import read_json
from h2a.analysis.sex import (
    bootstrap_auc,
    by_age_band,
    calibration_bins,
    confident_cases,
    expected_calibration_error,
    roc_points,
    summary,
)
from tests.conftest import run_cli

TINY_SEX = "tiny-sex"


def make_sex_run(data: Path, workspace: Path, name: str = TINY_SEX, **kw) -> Path:
    """A small finished sex run (tiny_cnn, 64 px, 20% held out); reused when it exists."""
    from h2a.engine.config import TrainConfig
    from h2a.engine.trainer import train

    out = workspace / "models" / name
    if not (out / "metadata.json").exists():
        base = dict(data=str(data), out=str(out), task="sex", arch="tiny_cnn", pretrained=False,
                    preprocess=PreprocessConfig(size=64).to_dict(), epochs=3, batch_size=32, lr=3e-3,
                    workers=0, seed=0, holdout_fraction=0.2,
                    amp="off")  # float32 on every CPU: the suite's runs must not depend on the CI machine's bf16
        base.update(kw)
        train(TrainConfig(**base), log=lambda m: None)
    return out


def _check_sex_json(out: dict, n: int) -> None:
    for key in ("task", "n", "accuracy", "balanced_accuracy", "auc", "auc_by_age_band", "n_by_age_band",
                "confusion", "share_male"):
        assert key in out, key
    assert out["task"] == "sex" and out["n"] == n
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["balanced_accuracy"] <= 1 and 0 <= out["auc"] <= 1
    cm = np.asarray(out["confusion"])
    assert cm.shape == (2, 2) and cm.sum() == n
    assert out["accuracy"] == pytest.approx(np.trace(cm) / n)
    assert out["share_male"] == pytest.approx(cm[1].sum() / n)
    assert sum(out["n_by_age_band"].values()) == n
    assert set(out["auc_by_age_band"]) == set(out["n_by_age_band"])
    for band, auc in out["auc_by_age_band"].items():
        assert band.endswith(" y") and (auc is None or 0 <= auc <= 1)


def test_sex_run_on_demo_trains_and_evaluates(demo_dir: Path, workspace: Path) -> None:
    run = make_sex_run(demo_dir, workspace)
    meta = read_json(run / "metadata.json")
    assert meta["task"] == "sex" and meta["model"]["use_sex"] is False  # sex is the target, never an input
    assert meta["train_config"]["use_sex"] is False
    hist = meta["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and all(0 <= h["val_auc"] <= 1 for h in hist)
    sizes = meta["split_sizes"]
    assert sizes["holdout"] > 0 and not set(meta["splits"]["holdout"]) & set(meta["splits"]["train"])
    _check_sex_json(meta["metrics"], sizes["validation"])

    proc = run_cli("evaluate", "--model", str(run), "--split", "holdout", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    _check_sex_json(out, sizes["holdout"])
    assert out["split"] == "holdout"


def test_sex_run_on_real_thumbnails(thumbs_dir: Path, tmp_path: Path, workspace: Path, capsys) -> None:
    """300 real RSNA thumbnails (symlinks), 48 px, one short epoch: the engine copes with real data."""
    labels = pd.read_csv(thumbs_dir / "boneage-training-dataset.csv").sample(300, random_state=0)
    root = tmp_path / "rsna-300"
    (root / "boneage-training-dataset").mkdir(parents=True)
    labels.to_csv(root / "boneage-training-dataset.csv", index=False)
    for i in labels["id"]:
        os.symlink(thumbs_dir / "boneage-training-dataset" / f"{i}.png", root / "boneage-training-dataset" / f"{i}.png")
    out = workspace / "models" / "tiny-sex-rsna"
    from h2a.cli import main  # in-process: the same CLI without paying torch's import twice more

    assert main(["train", "--task", "sex", "--data", str(root), "--out", str(out), "--arch", "tiny_cnn",
                 "--no-pretrained", "--image-size", "48", "--epochs", "1", "--batch-size", "32",
                 "--holdout-fraction", "0.2", "--max-train-images", "150", "--workers", "0"]) == 0
    assert "validation AUC" in capsys.readouterr().out
    meta = read_json(out / "metadata.json")
    assert meta["split_sizes"]["holdout"] == pytest.approx(60, abs=4)
    assert meta["split_sizes"]["train"] == 150
    assert main(["evaluate", "--model", str(out), "--split", "holdout", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    _check_sex_json(res, meta["split_sizes"]["holdout"])
    assert 0.3 < res["share_male"] < 0.8  # real data: about 54% boys


# ---------------------------------------------------------------- helpers

def test_bootstrap_auc_matches_sklearn_and_covers_the_truth() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(600) < 0.5).astype(int)
    p = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.5, 600))))
    ci = bootstrap_auc(y, p, n=500, seed=1)
    assert ci["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert ci["low"] < ci["auc"] < ci["high"] and ci["n_boot"] == 500
    assert 0.03 < ci["high"] - ci["low"] < 0.15  # about 4 standard errors wide at n = 600
    assert bootstrap_auc(y, p, n=500, seed=1) == ci  # seeded: reproducible
    # ties count one half, perfect separation gives a degenerate interval
    assert bootstrap_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], n=50)["auc"] == 0.5
    perfect = bootstrap_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n=200)
    assert perfect["auc"] == perfect["low"] == perfect["high"] == 1.0
    assert bootstrap_auc([1, 1, 1], [0.2, 0.5, 0.9])["auc"] is None
    # chance-level scores: the interval contains 0.5
    noise = bootstrap_auc(y, rng.random(600), n=500)
    assert noise["low"] < 0.5 < noise["high"]


def test_calibration_and_cases() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # calibrated by construction
    bins = calibration_bins(y, p, 10)
    assert len(bins) == 10 and bins["n"].sum() == 20000
    assert np.abs(bins["mean_predicted"] - bins["share_male"]).max() < 0.03
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, p ** 3) > 0.1  # an over-confident-for-girls model is not
    roc = roc_points(y, p)
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].iloc[-1] == 1.0

    preds = pd.DataFrame({"id": list("abcdef"), "male": [True, False, True, False, True, False],
                          "p_male": [0.99, 0.02, 0.4, 0.9, 0.6, 0.55], "boneage": [150, 160, 30, 40, 100, 110]})
    preds["correct"] = (preds["p_male"] >= 0.5) == preds["male"]
    preds["confidence"] = (preds["p_male"] - 0.5).abs() * 2
    right, wrong = confident_cases(preds, 2)
    assert right["id"].tolist() == ["a", "b"] and wrong["id"].tolist() == ["d", "c"]
    bands = by_age_band(preds, n_boot=50)
    assert bands["band"].tolist() == ["2-4 y", "8-10 y", "12-14 y"]
    assert bands.set_index("band").loc["12-14 y", "auc"] == 1.0
    assert bands["n"].sum() == 6


def test_summary_sentence_says_what_was_measured() -> None:
    metrics = {"n": 1100, "accuracy": 0.74, "share_male": 0.54,
               "auc_by_age_band": {"2-4 y": 0.55, "12-14 y": 0.9, "16-18 y": 0.95},
               "n_by_age_band": {"2-4 y": 80, "12-14 y": 300, "16-18 y": 5}}
    text = summary(metrics, {"auc": 0.82, "low": 0.79, "high": 0.85})
    assert "clearly" in text and "0.82" in text and "0.79 to 0.85" in text and "74%" in text and "54%" in text
    assert "12-14 y" in text and "2-4 y" in text and "16-18 y" not in text  # bands under 20 images are left out
    weak = summary({"n": 50, "accuracy": 0.5}, {"auc": 0.55, "low": 0.4, "high": 0.7})
    assert "may be guessing" in weak
    assert "cannot be measured" in summary({"n": 3}, {"auc": None, "low": None, "high": None})


def test_reliability_frame_shows_raw_and_calibrated() -> None:
    from h2a.analysis.sex import reliability_frame

    rng = np.random.default_rng(4)
    p = rng.random(3000)
    y = rng.random(3000) < p
    preds = pd.DataFrame({"male": y, "p_male": p, "p_male_raw": p ** 3})
    frame = reliability_frame(preds)
    assert set(frame["probabilities"]) == {"calibrated", "raw"}
    assert frame.groupby("probabilities")["n"].sum().tolist() == [3000, 3000]
    assert set(reliability_frame(preds.drop(columns="p_male_raw"))["probabilities"]) == {"calibrated"}
