"""Helpers that turn a sex classifier's predictions into an honest answer.

Bootstrap interval on ROC-AUC, ROC points, reliability-diagram bins, the most confident
right and wrong cases, and the plain-language summary the sex page shows. Inputs are
plain arrays (``y`` 1 = male, ``p`` = predicted P(male)), as ``h2a.inference.evaluate.evaluate``
returns them for a sex run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from h2a.inference.calibration import ECE_BINS
from h2a.inference.calibration import expected_calibration_error as _ece
from h2a.inference.metrics import age_band_labels, band_order

__all__ = ["bootstrap_auc", "calibration_bins", "roc_points", "confident_cases", "summary",
           "expected_calibration_error", "reliability_frame"]


def _auc_rows(y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """AUC of each row of scores P (R, n) against labels y (R, n) (Mann-Whitney, ties = 1/2)."""
    from scipy.stats import rankdata

    ranks = rankdata(P, axis=1)
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def bootstrap_auc(y, p, n: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """ROC-AUC with a percentile bootstrap interval (resampling images with replacement).

    Returns ``auc``, ``low``, ``high``, ``level``, ``n_boot`` (resamples with both classes)
    and ``n``. All None when ``y`` has a single class.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok].astype(int), p[ok]
    empty = {"auc": None, "low": None, "high": None, "level": level, "n_boot": 0, "n": int(len(y))}
    if len(y) < 2 or len(np.unique(y)) < 2:
        return empty
    auc = float(_auc_rows(y[None], p[None])[0])
    rng = np.random.default_rng(seed)
    boots = []
    for start in range(0, n, 200):  # bounded memory: 200 resamples at a time
        idx = rng.integers(0, len(y), size=(min(200, n - start), len(y)))
        boots.append(_auc_rows(y[idx], p[idx]))
    b = np.concatenate(boots)
    b = b[np.isfinite(b)]
    if len(b) == 0:
        return {**empty, "auc": auc}
    alpha = (1 - level) / 2
    return {"auc": auc, "low": float(np.quantile(b, alpha)), "high": float(np.quantile(b, 1 - alpha)),
            "level": level, "n_boot": int(len(b)), "n": int(len(y))}


def roc_points(y, p) -> pd.DataFrame:
    """False/true positive rates along the threshold (male = positive)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(y, int), np.asarray(p, float))
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})


def calibration_bins(y, p, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Reliability diagram: equal-width bins of P(male) -> mean predicted vs observed share male."""
    y = np.asarray(y, float)
    p = np.clip(np.asarray(p, float), 0, 1)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = which == b
        if m.any():
            rows.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "mean_predicted": float(p[m].mean()),
                         "share_male": float(y[m].mean()), "n": int(m.sum())})
    df = pd.DataFrame(rows, columns=["bin", "mean_predicted", "share_male", "n"])
    return df


def expected_calibration_error(y, p, n_bins: int = ECE_BINS) -> float:
    """ECE over equal-width bins (15 by default, as ``h2a evaluate --json`` reports it)."""
    return _ece(y, p, n_bins)


def reliability_frame(preds: pd.DataFrame, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Reliability-diagram bins of the calibrated P(male) and, when the frame has it, the raw
    one (``p_male_raw``), stacked with a ``probabilities`` column naming which, so one
    figure shows what temperature scaling changed."""
    y = preds["male"].astype(int).to_numpy()
    parts = [calibration_bins(y, preds["p_male"].to_numpy(dtype=float), n_bins).assign(probabilities="calibrated")]
    if "p_male_raw" in preds:
        raw = calibration_bins(y, preds["p_male_raw"].to_numpy(dtype=float), n_bins).assign(probabilities="raw")
        parts.append(raw)
    return pd.concat(parts, ignore_index=True)


def confident_cases(preds: pd.DataFrame, n: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(most confident correct, most confident wrong) rows of a sex predictions frame."""
    df = preds.sort_values("confidence", ascending=False)
    return df[df["correct"]].head(n), df[~df["correct"]].head(n)


def _strength(auc: float) -> str:
    if auc >= 0.9:
        return "strongly"
    if auc >= 0.8:
        return "clearly"
    if auc >= 0.7:
        return "moderately"
    if auc >= 0.6:
        return "weakly"
    return "barely, if at all,"


def summary(metrics: dict, ci: dict) -> str:
    """A few plain sentences: can the model tell sex, how sure are we, at which ages."""
    if ci.get("auc") is None:
        return "These images are all of one sex, so the model's ability to tell sex cannot be measured here."
    auc, lo, hi = ci["auc"], ci["low"], ci["high"]
    text = (f"On {metrics['n']:,} images the model {_strength(auc)} tells boys from girls: ROC-AUC {auc:.2f} "
            f"(95% bootstrap interval {lo:.2f} to {hi:.2f}; 0.5 is a coin toss, 1.0 perfect). "
            f"Accuracy at the 0.5 threshold is {100 * metrics['accuracy']:.0f}%")
    share = metrics.get("share_male")
    if share is not None:
        text += f" (always guessing the larger sex would give {100 * max(share, 1 - share):.0f}%)"
    text += "."
    bands = {b: a for b, a in (metrics.get("auc_by_age_band") or {}).items() if a is not None
             and (metrics.get("n_by_age_band") or {}).get(b, 0) >= 20}
    if len(bands) >= 2:
        best = max(bands, key=bands.get)
        worst = min(bands, key=bands.get)
        text += (f" The signal depends on age: AUC {bands[best]:.2f} at {best} of bone age but "
                 f"{bands[worst]:.2f} at {worst} (bands with at least 20 images).")
    if lo is not None and lo <= 0.5:
        text += " The interval includes 0.5, so on this data the model may be guessing."
    return text


def by_age_band(preds: pd.DataFrame, n_boot: int = 300, seed: int = 0, width: int = 24) -> pd.DataFrame:
    """Per 2-year bone-age band: n, share male, accuracy, AUC with a bootstrap interval.

    ``preds`` is a sex predictions frame (``male``, ``p_male``, ``correct``, ``boneage``).
    """
    df = preds[np.isfinite(preds["boneage"].to_numpy(dtype=float))]
    if df.empty:
        return pd.DataFrame(columns=["band", "n", "share_male", "accuracy", "auc", "auc_low", "auc_high"])
    bands = age_band_labels(df["boneage"].to_numpy(dtype=float), width)
    rows = []
    for b in band_order(bands):
        sub = df[bands == b]
        y = sub["male"].astype(int).to_numpy()
        ci = bootstrap_auc(y, sub["p_male"].to_numpy(), n=n_boot, seed=seed)
        rows.append({"band": b, "n": len(sub), "share_male": float(y.mean()),
                     "accuracy": float(sub["correct"].mean()), "auc": ci["auc"],
                     "auc_low": ci["low"], "auc_high": ci["high"]})
    return pd.DataFrame(rows)
