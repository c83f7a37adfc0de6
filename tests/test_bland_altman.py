"""Bland-Altman agreement: one definition in h2a.inference.metrics, reported by
``regression_metrics`` (so by ``h2a evaluate --json``) and read by the Evaluation page."""

from __future__ import annotations

import json
import math
from pathlib import Path

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


# ---------------------------------------------------------------- evaluate on edge datasets (issue 17)

def _labelled_copy(demo_dir: Path, dest: Path, n: int, garbage: int) -> Path:
    """The first ``n`` labelled demo images in RSNA layout, the first ``garbage`` of them
    replaced by bytes no decoder reads."""
    import shutil

    import pandas as pd

    from h2a.data.demo import TRAIN_CSV, TRAIN_DIR

    labels = pd.read_csv(demo_dir / TRAIN_CSV).head(n)
    (dest / TRAIN_DIR).mkdir(parents=True)
    labels.to_csv(dest / TRAIN_CSV, index=False)  # input data for the test, not an H2A export
    for k, i in enumerate(labels["id"]):
        target = dest / TRAIN_DIR / f"{i}.png"
        if k < garbage:
            target.write_bytes(b"\x89PNG\r\n\x1a\n not really a png " * 4)
        else:
            shutil.copy(demo_dir / TRAIN_DIR / f"{i}.png", target)
    return dest


def _no_nan_tokens(text: str) -> dict:
    """Parse JSON strictly: NaN / Infinity tokens (not JSON) raise."""
    def bad(token):
        raise AssertionError(f"{token} in JSON output")

    return json.loads(text, parse_constant=bad)


def test_evaluate_with_no_decodable_image_exits_2_with_one_line(tiny_run, demo_dir, tmp_path, capsys) -> None:
    from h2a.cli import main

    data = _labelled_copy(demo_dir, tmp_path / "broken", n=4, garbage=4)
    for extra in ([], ["--json"]):
        assert main(["evaluate", "--model", str(tiny_run), "--data", str(data), *extra]) == 2
        cap = capsys.readouterr()
        lines = [ln for ln in cap.err.splitlines() if ln.strip() and not ln.startswith("evaluate")]
        assert len(lines) == 1, cap.err
        assert "none of the 4 labelled images could be decoded" in lines[0] and "Traceback" not in cap.err
        assert cap.out == ""


def test_evaluate_json_is_strict_json_with_one_decodable_image(tiny_run, demo_dir, tmp_path, capsys) -> None:
    """One image left: SDs, R2 and the limits of agreement are undefined; --json says null."""
    from h2a.cli import main

    data = _labelled_copy(demo_dir, tmp_path / "one", n=3, garbage=2)
    assert main(["evaluate", "--model", str(tiny_run), "--data", str(data), "--json"]) == 0
    out = _no_nan_tokens(capsys.readouterr().out)
    assert out["n"] == 1 and out["n_failed_images"] == 2 and out["bland_altman"]["sd"] is None
    assert main(["evaluate", "--model", str(tiny_run), "--data", str(data)]) == 0
    assert "on 1 images" in capsys.readouterr().out
