"""The metrics that judge a run: one definition for validation, evaluation and the pages."""

from __future__ import annotations

import numpy as np
import pandas as pd


def age_band_labels(ages: np.ndarray, width: int = 24) -> np.ndarray:
    """'0-2 y', '2-4 y', ... labels for 2-year bands of bone age in months."""
    lo = (np.floor(np.asarray(ages, float) / width) * width).astype(int)
    return np.array([f"{a // 12}-{(a + width) // 12} y" for a in lo])


def band_order(labels) -> list[str]:
    """Band labels in age order ('2-4 y' before '10-12 y')."""
    return sorted(set(labels), key=lambda s: int(s.split("-")[0]))


def json_safe(obj):
    """``obj`` with numpy scalars as Python numbers and NaN / infinity as None, recursively:
    what strict JSON (``allow_nan=False``) and a formatter that checks for None can take."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(json_safe(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


LOA_Z = 1.96  # limits of agreement: bias +/- 1.96 SD covers ~95% of differences (normal errors)


def bland_altman(y: np.ndarray, pred: np.ndarray) -> dict:
    """Bland-Altman agreement of predictions with the truth (differences = pred - y).

    ``bias`` is the mean difference, ``sd`` its sample standard deviation (ddof=1, as
    Bland & Altman 1986 and pandas use), ``loa_low``/``loa_high`` = bias -/+ LOA_Z * sd:
    the range where ~95% of a new image's errors fall. One place, so the Evaluation page
    and ``h2a evaluate --json`` give the same limits; ``sd`` and the limits are None with
    fewer than two images.
    """
    diff = np.asarray(pred, float) - np.asarray(y, float)
    diff = diff[np.isfinite(diff)]
    n = len(diff)
    bias = float(diff.mean()) if n else None
    sd = float(diff.std(ddof=1)) if n > 1 else None
    return {
        "n": n,
        "bias": bias,
        "sd": sd,
        "loa_low": None if sd is None else bias - LOA_Z * sd,
        "loa_high": None if sd is None else bias + LOA_Z * sd,
        "z": LOA_Z,
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray, male: np.ndarray) -> dict:
    """MAE, RMSE, R², share within 12 months, MAE by sex and by 2-year band, Bland-Altman."""
    y, pred, male = np.asarray(y, float), np.asarray(pred, float), np.asarray(male, bool)
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    bands = age_band_labels(y)
    return {
        "task": "boneage",
        "n": int(len(y)),
        "mae": float(np.abs(err).mean()),
        # the noise of the MAE itself: the standard error of the mean absolute error
        "mae_se": float(np.abs(err).std(ddof=1) / np.sqrt(len(err))) if len(err) > 1 else None,
        "rmse": float(np.sqrt((err ** 2).mean())),
        "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else None,
        "bias": float(err.mean()),
        "within_12_months": float((np.abs(err) <= 12).mean()),
        "mae_baseline_mean": float(np.abs(y - y.mean()).mean()),
        "mae_by_sex": {
            label: float(np.abs(err[mask]).mean())
            for label, mask in (("male", male), ("female", ~male)) if mask.any()
        },
        "mae_by_age_bin": {b: float(np.abs(err[bands == b]).mean()) for b in band_order(bands)},
        "n_by_age_bin": {b: int((bands == b).sum()) for b in band_order(bands)},
        "bland_altman": bland_altman(y, pred),
    }


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, int)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, score))


def auc_standard_error(auc: float | None, n_pos: int, n_neg: int) -> float | None:
    """Hanley & McNeil (1982): the AUC's standard error from its value and the class sizes."""
    if auc is None or n_pos < 1 or n_neg < 1:
        return None
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def classification_metrics(y: np.ndarray, prob: np.ndarray, boneage: np.ndarray | None = None) -> dict:
    """Accuracy, balanced accuracy, ROC-AUC, confusion matrix, AUC by 2-year age band."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    y, prob = np.asarray(y, int), np.asarray(prob, float)
    pred = (prob >= 0.5).astype(int)
    out = {
        "task": "sex",
        "n": int(len(y)),
        "share_male": float(y.mean()) if len(y) else None,
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1 else None,
        "auc": roc_auc(y, prob),
        "auc_se": auc_standard_error(roc_auc(y, prob), int(y.sum()), int((1 - y).sum())),
        "confusion": confusion_matrix(y, pred, labels=[0, 1]).tolist(),  # rows true F/M, cols predicted F/M
    }
    if boneage is not None:
        ages = np.asarray(boneage, float)
        ok = np.isfinite(ages)
        bands = age_band_labels(ages[ok])
        out["auc_by_age_band"] = {b: roc_auc(y[ok][bands == b], prob[ok][bands == b]) for b in band_order(bands)}
        out["n_by_age_band"] = {b: int((bands == b).sum()) for b in band_order(bands)}
    return out


def predictions_frame(ids, y, pred, male, task: str, boneage=None) -> pd.DataFrame:
    """One row per image, sorted worst first (largest error / most confident mistake)."""
    df = pd.DataFrame({"id": list(ids), "male": np.asarray(male, bool)})
    if boneage is not None and task != "boneage":
        df["boneage"] = np.asarray(boneage, float)
    if task == "boneage":
        df["boneage"] = np.asarray(y, float)
        df["predicted"] = np.asarray(pred, float)
        df["error"] = df["predicted"] - df["boneage"]
        return df.sort_values("error", key=np.abs, ascending=False).reset_index(drop=True)
    df["p_male"] = np.asarray(pred, float)
    df["correct"] = (df["p_male"] >= 0.5) == df["male"]
    df["confidence"] = np.abs(df["p_male"] - 0.5) * 2
    return df.sort_values(["correct", "confidence"], ascending=[True, False]).reset_index(drop=True)


def interval_metrics(y: np.ndarray, low: np.ndarray, high: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """Coverage (share of true ages inside [low, high]) overall and per 2-year band of the
    true age (the bands MAE is reported in), mean width; per ``groups`` too when given (the
    conformal groups, where its guarantee holds)."""
    y, low, high = np.asarray(y, float), np.asarray(low, float), np.asarray(high, float)
    inside = (y >= low) & (y <= high)
    bands = age_band_labels(y)
    out = {
        "interval_coverage": float(inside.mean()) if len(y) else None,
        "interval_width_months": float((high - low).mean()) if len(y) else None,
        "coverage_by_age_bin": {b: float(inside[bands == b].mean()) for b in band_order(bands)},
        "width_by_age_bin": {b: float((high - low)[bands == b].mean()) for b in band_order(bands)},
        "n_by_age_bin": {b: int((bands == b).sum()) for b in band_order(bands)},
    }
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        out["coverage_by_group"] = {str(g): {"coverage": float(inside[groups == g].mean()),
                                             "n": int((groups == g).sum())} for g in sorted(set(groups))}
    return out
