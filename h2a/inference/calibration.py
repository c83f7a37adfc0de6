"""A run's calibration: conformal intervals (bone age) or temperature scaling (sex), stored
in the run folder as ``calibration.json`` and summarised in ``metadata.json["calibration"]``.

Why a file of its own: calibration is refitted after training (``h2a calibrate`` for another
prediction procedure or level) without touching the weights, and an old run without the file
still loads (predict falls back to the old interval rule and says so).

Measured coverage: the calibration stores a 5-fold cross-fitted coverage on the validation
split (the in-sample one is >= the level by construction); ``h2a evaluate --split holdout``
with the calibrated procedure records the held-out coverage in ``coverage.json``, which
``measured_coverage`` prefers. Each record carries the calibration's id, so a recalibration
makes the old figure stale rather than wrong.

Core module: no streamlit.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from h2a.run import Run
from h2a.inference.conformal import DEFAULT_LEVEL, Procedure, choose_conformal, conformal_from_dict

__all__ = ["DEFAULT_TTA", "ECE_BINS", "TemperatureScaler", "boneage_calibration",
           "calibration_summary", "expected_calibration_error", "measured_coverage", "predict_procedure",
           "read_calibration", "record_coverage", "sex_calibration", "write_calibration"]

# ``h2a predict`` / the predict page average the image and DEFAULT_TTA - 1 augmented copies
# (h2a.predict.predictor re-exports it). Defined here because the end-of-training calibration
# must use the very procedure predict uses by default.
DEFAULT_TTA = 8
ECE_BINS = 15  # expected calibration error: 15 equal-width bins (Guo et al. 2017)


def predict_procedure(tta: int = DEFAULT_TTA) -> Procedure:
    """The procedure of a prediction with ``tta`` copies (the default: what predict does)."""
    return Procedure.for_predict(tta)


# ---------------------------------------------------------------- sex: temperature scaling

def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def expected_calibration_error(y, p, n_bins: int = ECE_BINS) -> float:
    """Share-weighted mean |mean predicted P(male) - observed share male| over equal-width bins."""
    y = np.asarray(y, float)
    p = np.clip(np.asarray(p, float), 0, 1)
    if len(p) == 0:
        return float("nan")
    which = np.clip(np.digitize(p, np.linspace(0, 1, n_bins + 1)[1:-1]), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = which == b
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(p))


class TemperatureScaler:
    """Temperature scaling (Guo et al. 2017): P = sigmoid(logit / T_ [+ shift_]).

    One parameter fitted by minimising the log loss on the validation split: it changes
    how confident the probabilities are but never their order, so ROC-AUC is unchanged and
    (without ``shift``) so is every decision at 0.5. ``shift=True`` also fits an offset
    (Platt scaling), for a classifier that leans towards one sex; it moves the 0.5 decisions.
    """

    def __init__(self, shift: bool = False) -> None:
        self.shift = bool(shift)

    def fit(self, logits: np.ndarray, y: np.ndarray) -> TemperatureScaler:
        from scipy.optimize import minimize

        z, t = np.asarray(logits, float), np.asarray(y, float)
        ok = np.isfinite(z) & np.isfinite(t)
        z, t = z[ok], t[ok]
        if len(z) == 0:
            raise ValueError("no validation logits to fit a temperature on")

        def nll(params: np.ndarray) -> float:
            log_t, b = params[0], (params[1] if self.shift else 0.0)
            q = z / np.exp(log_t) + b
            return float(np.mean(np.logaddexp(0.0, q) - t * q))  # -log likelihood, stable

        x0 = np.zeros(2 if self.shift else 1)
        res = minimize(nll, x0, method="L-BFGS-B", bounds=[(-4.0, 4.0)] + ([(-10.0, 10.0)] if self.shift else []))
        self.temperature_ = float(np.exp(res.x[0]))
        self.shift_ = float(res.x[1]) if self.shift else 0.0
        self.n_ = int(len(z))
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits."""
        if not hasattr(self, "temperature_"):
            raise RuntimeError("TemperatureScaler is not fitted: call fit() first")
        return np.asarray(logits, float) / self.temperature_ + self.shift_

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(positive)."""
        return _sigmoid(self.transform(logits))

    def describe(self) -> str:
        return (f"temperature scaling (T = {self.temperature_:.3f}"
                + (f", shift {self.shift_:+.3f}" if self.shift else "") + f", {self.n_} validation images)")

    def to_dict(self) -> dict:
        return {"method": "temperature scaling" + (" + shift" if self.shift else ""), "shift": self.shift,
                "temperature": self.temperature_, "logit_shift": self.shift_, "n": self.n_}

    @classmethod
    def from_dict(cls, d: dict) -> TemperatureScaler:
        s = cls(bool(d.get("shift", False)))
        s.temperature_, s.shift_, s.n_ = float(d["temperature"]), float(d.get("logit_shift", 0.0)), int(d["n"])
        return s


# ---------------------------------------------------------------- fitting (task-specific content)

def _stamp(content: dict) -> dict:
    """Add the creation time and an id that changes whenever the calibration does."""
    content["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    content["id"] = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return content


def boneage_calibration(pred: np.ndarray, age: np.ndarray, male: np.ndarray, procedure: Procedure,
                        level: float = DEFAULT_LEVEL) -> dict:
    """calibration.json content for a bone-age run from validation predictions (months)."""
    conf, choice = choose_conformal(pred, age, male, level)
    chosen = next(c for c in choice["candidates"] if c["grouping"] == choice["chosen"])
    return _stamp({"task": "boneage", "split": "validation", "procedure": procedure.to_dict(),
                   "interval": conf.to_dict(), "validation_coverage": chosen,
                   "interval_candidates": choice["candidates"]})


# Sex runs fit an offset with the temperature by default: on the recipe's held-out
# thumbnails the temperature alone left the ECE where it was (0.114 raw -> 0.121), the
# offset brought it to 0.043, because the raw classifier leans one way (too many boys
# called girls) and a temperature cannot move the 0.5 decision.
SEX_LOGIT_SHIFT = True


def sex_calibration(logits: np.ndarray, male: np.ndarray, procedure: Procedure,
                    shift: bool = SEX_LOGIT_SHIFT) -> dict:
    """calibration.json content for a sex run from validation logits."""
    y = np.asarray(male, float)
    scaler = TemperatureScaler(shift).fit(logits, y)
    return _stamp({"task": "sex", "split": "validation", "procedure": procedure.to_dict(),
                   "temperature": scaler.to_dict(),
                   "validation_ece_uncalibrated": expected_calibration_error(y, _sigmoid(np.asarray(logits, float))),
                   "validation_ece": expected_calibration_error(y, scaler.predict_proba(logits))})


def calibration_summary(cal: dict | None) -> dict | None:
    """The few facts metadata.json keeps about the calibration (the file holds the rest)."""
    if not cal:
        return None
    out = {"id": cal.get("id"), "created": cal.get("created"),
           "procedure": cal.get("procedure"), "split": cal.get("split")}
    if "interval" in cal:
        iv = cal["interval"]
        out.update(method=iv["method"], level=iv["level"], n=iv["n"],
                   grouping=conformal_from_dict(iv).grouping(),
                   validation_coverage=cal.get("validation_coverage"))
    if "temperature" in cal:
        out.update(method=cal["temperature"]["method"], temperature=cal["temperature"]["temperature"],
                   validation_ece=cal.get("validation_ece"),
                   validation_ece_uncalibrated=cal.get("validation_ece_uncalibrated"))
    return out


# ---------------------------------------------------------------- the run folder

def read_calibration(run_dir: str | Path) -> dict | None:
    """calibration.json of a run, or None (an old run, or none fitted)."""
    return Run.at(run_dir).calibration


def write_calibration(run_dir: str | Path, cal: dict) -> None:
    """Write calibration.json and describe it in metadata.json (both atomically)."""
    run = Run.at(run_dir)
    run.write_calibration(cal)
    meta = run.meta
    if meta is not None:
        meta["calibration"] = calibration_summary(cal)
        run.write_meta(meta)


def record_coverage(run_dir: str | Path, cal: dict, split: str, data: str, n: int, coverage: float,
                    width: float) -> None:
    """Remember an evaluation's interval coverage for the predict page (best effort)."""
    run = Run.at(run_dir)
    rec = run.record("coverage") or {}
    if rec.get("calibration_id") != cal.get("id"):
        rec = {"calibration_id": cal.get("id"), "evaluations": {}}
    rec["evaluations"][split] = {"split": split, "data": data, "n": int(n), "coverage": float(coverage),
                                 "width_months": float(width), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        run.write_record("coverage", rec)
    except OSError:
        pass  # a read-only run folder: the figure is still in the evaluation's output


def measured_coverage(run_dir: str | Path, cal: dict | None = None) -> dict | None:
    """The run's best measured interval coverage, saying where it comes from.

    A held-out evaluation with the calibrated procedure (``coverage.json``) when there is
    one, else the 5-fold cross-fit on the validation split. None without a calibration.
    """
    cal = cal if cal is not None else read_calibration(run_dir)
    if not cal or "interval" not in cal:
        return None
    rec = Run.at(run_dir).record("coverage") or {}
    held = (rec.get("evaluations") or {}).get("holdout") if rec.get("calibration_id") == cal.get("id") else None
    if held:
        return {"coverage": held["coverage"], "n": held["n"], "width_months": held.get("width_months"),
                "source": "held-out evaluation",
                "text": f"{100 * held['coverage']:.1f}% on {held['n']:,} held-out images (last evaluation, "
                        f"{str(held.get('when', ''))[:10]})"}
    v = cal.get("validation_coverage") or {}
    if v.get("coverage") is None:
        return None
    return {"coverage": v["coverage"], "n": v["n"], "width_months": v.get("width_months"),
            "source": "validation cross-fit",
            "text": f"{100 * v['coverage']:.1f}% on {v['n']:,} validation images ({v.get('folds', 5)}-fold "
                    "cross-fit: each fold's intervals come from the other folds; no held-out evaluation yet)"}
