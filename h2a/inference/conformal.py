"""Conformal prediction intervals for bone age: split-conformal, Mondrian by age band and sex.

Why conformal: "estimate +/- 1.96 x max(TTA spread, validation RMSE)" gives every child
the same width and nobody knows how often it covers the truth. Split-conformal (Vovk et
al. 2005; Angelopoulos & Bates 2021) takes the absolute residuals |y - prediction| of
images the model never trained on (the run's validation split) and uses their
``ceil((n + 1) * level) / n`` empirical quantile as the half-width: for a new image
exchangeable with those n, the interval covers the true bone age with probability at
least ``level``, whatever the model.

Why Mondrian: errors depend on age (16-18 y about 12 months, 12-14 y about 7), so one
pooled width is too wide in the middle and too narrow at the ends. Mondrian conformal
computes the quantile separately in each group, so the guarantee holds per group. The
group must be known when predicting, so it comes from the *predicted* age and the given
sex, never the true age.

Why coarse groups and a fallback (the rule, stated once in the constants below): with n
residuals in a group, the coverage the interval achieves on new images of that group is
Beta(k, n + 1 - k) distributed with k = ceil((n + 1) * level). About 550 validation
images in 2-year bands x sex give ~25 per group: then k = n, the half-width is the
group's single largest residual and the realised coverage has an SD of ~0.04. So:

* bands are coarse (``BAND_EDGES_MONTHS``: < 8, 8-11, 11-14, >= 14 y of predicted age),
  each holding 80-200 of ~550 RSNA validation images;
* a group needs ``MIN_GROUP`` residuals (80: the realised coverage's SD is then ~0.024 at
  95%, so a group lands below 0.90 only ~2% of the time); a (band, sex) group with fewer
  falls back to its band pooled over sex, and a band with fewer to all images pooled.
  ``fallback_`` records which groups did.

Core module: numpy only, JSON-serialisable (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from h2a.inference.metrics import interval_metrics

__all__ = ["BAND_EDGES_MONTHS", "DEFAULT_LEVEL", "METHOD", "MIN_GROUP", "MondrianConformal", "NORMALISED_METHOD",
           "NormalisedConformal", "Procedure", "band_label", "choose_conformal", "conformal_from_dict",
           "conformal_quantile"]

DEFAULT_LEVEL = 0.95
BAND_EDGES_MONTHS: tuple[float, ...] = (96.0, 132.0, 168.0)  # predicted-age band edges: 8, 11, 14 y
MIN_GROUP = 80  # fewest residuals a group's own quantile is trusted with (see the module docstring)
POOLED = "all"
METHOD = "split-conformal (Mondrian)"


@dataclass(frozen=True)
class Procedure:
    """How a prediction was made: the residuals must come from the same procedure as the
    predictions the interval is used with (more views average away noise: a smaller error).

    ``flip_tta``: the horizontal mirror joins the mean; ``views``: that many augmented
    copies (the run's own ranges) join it. ``h2a predict --tta N`` is ``Procedure(False, N - 1)``.
    ``seeding``: how the copies were drawn (``h2a.inference.arrays.tta_views``): "image" (the
    same seed for every image, since 2026-12-07) or "row" (seeded by the image's row, older
    calibrations). Both have the same expected error, so it does not enter equality.
    """

    flip_tta: bool = False
    views: int = 0
    seeding: str = field(default="image", compare=False)

    @classmethod
    def for_predict(cls, tta: int) -> Procedure:
        """The procedure of ``Predictor.predict_image(tta=N)``: the image and N - 1 augmented copies."""
        return cls(False, max(0, int(tta) - 1))

    @classmethod
    def from_dict(cls, d: dict | None) -> Procedure:
        d = d or {}
        return cls(bool(d.get("flip_tta", False)), int(d.get("views", 0)), str(d.get("seeding", "row")))

    def to_dict(self) -> dict:
        return {"flip_tta": self.flip_tta, "views": self.views, "seeding": self.seeding}

    def describe(self) -> str:
        parts = ["the image"] + (["its mirror"] if self.flip_tta else [])
        if self.views:
            parts.append(f"{self.views} augmented cop{'y' if self.views == 1 else 'ies'}")
        text = "mean of " + ", ".join(parts) if len(parts) > 1 else "the image alone"
        return text + (" (copies seeded by row, before 2026-12-07)" if self.views and self.seeding == "row" else "")


def band_label(lo: float | None, hi: float | None) -> str:
    """'< 8 y', '8-11 y', '>= 14 y' for a band of months ('all ages' when unbounded)."""
    fmt = lambda m: f"{m / 12:g}"  # noqa: E731
    if lo is None and hi is None:
        return "all ages"
    if lo is None:
        return f"< {fmt(hi)} y"
    if hi is None:
        return f">= {fmt(lo)} y"
    return f"{fmt(lo)}-{fmt(hi)} y"


def _bands(band_edges: tuple[float, ...]) -> list[str]:
    """The band labels between consecutive edges, open at both ends."""
    edges = [None, *band_edges, None]
    return [band_label(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]


def _band_of(pred: np.ndarray, band_edges: tuple[float, ...]) -> np.ndarray:
    """Band label of each predicted age (months)."""
    idx = np.searchsorted(np.asarray(band_edges), np.asarray(pred, float), side="right")
    return np.asarray(_bands(band_edges), dtype=object)[idx]


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ceil((n + 1) level)-th smallest score.

    With fewer than 1 / (1 - level) - 1 scores that rank exceeds n (the interval would be
    infinite); the largest score is used instead and the guarantee no longer holds, which
    only happens on toy runs (the fallback to the pooled group prevents it otherwise).
    """
    s = np.sort(np.asarray(scores, float))
    n = len(s)
    if n == 0:
        return float("nan")
    k = math.ceil((n + 1) * level)
    return float(s[min(k, n) - 1])


class MondrianConformal:
    """Split-conformal intervals with one half-width per (predicted-age band, sex) group.

    sklearn style: ``fit(pred, y, male)`` learns ``quantiles_`` (group -> half-width in
    months), ``group_sizes_``, ``fallback_`` (group -> the group whose quantile it uses)
    and ``n_``; ``interval(pred, male)`` gives (low, high). The interval is symmetric
    about the prediction (absolute residuals: one 5% tail per group is steadier than two
    2.5% tails) and its low end is clipped at 0 months.
    """

    def __init__(self, level: float = DEFAULT_LEVEL, band_edges: tuple[float, ...] = BAND_EDGES_MONTHS,
                 by_sex: bool = True, min_group: int = MIN_GROUP) -> None:
        if not 0 < level < 1:
            raise ValueError(f"level must be between 0 and 1, got {level}")
        self.level = float(level)
        self.band_edges = tuple(float(e) for e in band_edges)
        self.by_sex = bool(by_sex)
        self.min_group = int(min_group)

    # -- groups ---------------------------------------------------------------
    @property
    def bands(self) -> list[str]:
        return _bands(self.band_edges)

    def band_of(self, pred: np.ndarray) -> np.ndarray:
        """Band label of each predicted age (months)."""
        return _band_of(pred, self.band_edges)

    def groups_of(self, pred: np.ndarray, male: np.ndarray) -> np.ndarray:
        """The finest group label of each image: 'band|sex' (or the band when not by sex)."""
        bands = self.band_of(pred)
        if not self.by_sex:
            return bands
        sex = np.where(np.asarray(male, bool), "male", "female")
        return np.array([f"{b}|{s}" for b, s in zip(bands, sex)], dtype=object)

    # -- fit / predict ----------------------------------------------------------
    def fit(self, pred: np.ndarray, y: np.ndarray, male: np.ndarray) -> MondrianConformal:
        """Learn each group's half-width from calibration residuals (the validation split)."""
        pred, y = np.asarray(pred, float), np.asarray(y, float)
        male = np.asarray(male, bool)
        ok = np.isfinite(pred) & np.isfinite(y)
        pred, y, male = pred[ok], y[ok], male[ok]
        if len(pred) == 0:
            raise ValueError("no calibration residuals: the validation split is empty")
        scores = np.abs(y - pred)
        bands = self.band_of(pred)
        fine = self.groups_of(pred, male)
        self.n_ = int(len(scores))
        self.quantiles_: dict[str, float] = {POOLED: conformal_quantile(scores, self.level)}
        self.group_sizes_: dict[str, int] = {POOLED: self.n_}
        self.fallback_: dict[str, str] = {}
        for band in self.bands:
            mask = bands == band
            self.group_sizes_[band] = int(mask.sum())
            if mask.sum() >= self.min_group:
                self.quantiles_[band] = conformal_quantile(scores[mask], self.level)
            else:
                self.fallback_[band] = POOLED
            if not self.by_sex:
                continue
            for sex in ("female", "male"):
                g = f"{band}|{sex}"
                gm = fine == g
                self.group_sizes_[g] = int(gm.sum())
                if gm.sum() >= self.min_group:
                    self.quantiles_[g] = conformal_quantile(scores[gm], self.level)
                else:
                    self.fallback_[g] = band if band in self.quantiles_ else POOLED
        return self

    def resolve(self, group: str) -> str:
        """The group whose quantile ``group`` uses (itself, its band or the pooled one)."""
        seen = group
        while seen not in self.quantiles_:
            seen = self.fallback_.get(seen, POOLED)
        return seen

    def half_width(self, pred: np.ndarray, male: np.ndarray) -> np.ndarray:
        """Half-width (months) of each prediction's interval."""
        self._check_fitted()
        groups = self.groups_of(pred, male)
        return np.array([self.quantiles_[self.resolve(g)] for g in groups], dtype=float)

    def interval(self, pred: np.ndarray, male: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) in months; low is clipped at 0."""
        pred = np.asarray(pred, float)
        h = self.half_width(pred, male)
        return np.maximum(0.0, pred - h), pred + h

    def cross_fit_coverage(self, pred: np.ndarray, y: np.ndarray, male: np.ndarray, folds: int = 5,
                           seed: int = 0, repeats: int = 1) -> dict:
        """Coverage on the calibration data measured honestly (in-sample it is >= level by construction)."""
        return _cross_fit(lambda: MondrianConformal(self.level, self.band_edges, self.by_sex, self.min_group),
                          pred, y, male, folds, seed, repeats)

    def _check_fitted(self) -> None:
        if not hasattr(self, "quantiles_"):
            raise RuntimeError("MondrianConformal is not fitted: call fit() first")

    # -- description and JSON ---------------------------------------------------
    def grouping(self) -> str:
        """One line: what the groups are and the fallback rule."""
        return (f"predicted-age bands {', '.join(self.bands)}" + (" x sex" if self.by_sex else "")
                + f"; a group with fewer than {self.min_group} validation images uses its band pooled over sex, "
                  "a band with fewer all images pooled")

    method = METHOD

    def describe(self, group: str | None = None) -> str:
        """E.g. 'split-conformal (Mondrian) 95%: group 8-11 y|female (uses 8-11 y, 212 images)'."""
        text = f"{METHOD} {100 * self.level:g}%"
        if group is None:
            return text
        used = self.resolve(group)
        shown = group.replace("|", ", ")
        if used == group:
            return f"{text}, group {shown} ({self.group_sizes_.get(group, 0)} validation images)"
        return (f"{text}, group {shown} has {self.group_sizes_.get(group, 0)} validation images, so it uses "
                f"{'all images pooled' if used == POOLED else used} ({self.group_sizes_.get(used, 0)})")

    def to_dict(self) -> dict:
        self._check_fitted()
        return {"method": METHOD, "level": self.level, "band_edges_months": list(self.band_edges),
                "by_sex": self.by_sex, "min_group": self.min_group, "n": self.n_,
                "quantiles": dict(self.quantiles_), "group_sizes": dict(self.group_sizes_),
                "fallback": dict(self.fallback_)}

    @classmethod
    def from_dict(cls, d: dict) -> MondrianConformal:
        c = cls(float(d["level"]), tuple(d["band_edges_months"]), bool(d["by_sex"]), int(d["min_group"]))
        c.n_ = int(d["n"])
        c.quantiles_ = {str(k): float(v) for k, v in d["quantiles"].items()}
        c.group_sizes_ = {str(k): int(v) for k, v in d["group_sizes"].items()}
        c.fallback_ = {str(k): str(v) for k, v in d["fallback"].items()}
        return c


# ---------------------------------------------------------------- normalised conformal

NORMALISED_METHOD = "split-conformal (normalised by age)"
NORMALISED_BANDWIDTHS: tuple[float, ...] = (12.0, 24.0)  # months: the candidates tried on validation
_GRID = np.arange(0.0, 301.0, 3.0)  # predicted ages (months) the error scale is tabulated at


class NormalisedConformal:
    """Split-conformal intervals whose width follows the error at the predicted age.

    Why: Mondrian groups need ~80 residuals each, so with ~500 validation images the
    youngest children share a band (< 8 y) with infants, whose errors are small, and a
    4-6-year-old gets too narrow an interval. Here the score is ``|y - pred| / s(pred)``,
    where ``s`` is a Gaussian-kernel average of the absolute residuals of validation images
    with a similar predicted age (Lei et al. 2018, "locally weighted" conformal); one
    quantile ``q`` of all n scores gives the half-width ``q * s(pred)``. Every image
    contributes to every quantile, and the width still follows age. ``s`` is fitted on the
    same residuals as ``q``, which can cost a little coverage: the cross-fit
    (``cross_fit_coverage``) measures it honestly, and the choice between methods is made
    on that measurement (``choose_conformal``).
    """

    method = NORMALISED_METHOD

    def __init__(self, level: float = DEFAULT_LEVEL, bandwidth: float = 24.0,
                 band_edges: tuple[float, ...] = BAND_EDGES_MONTHS) -> None:
        if not 0 < level < 1:
            raise ValueError(f"level must be between 0 and 1, got {level}")
        self.level, self.bandwidth = float(level), float(bandwidth)
        self.band_edges = tuple(float(e) for e in band_edges)

    def groups_of(self, pred: np.ndarray, male: np.ndarray) -> np.ndarray:
        """Predicted-age band of each image: the groups coverage is reported by (not fitted by)."""
        return _band_of(pred, self.band_edges)

    def fit(self, pred: np.ndarray, y: np.ndarray, male: np.ndarray | None = None) -> NormalisedConformal:
        pred, y = np.asarray(pred, float), np.asarray(y, float)
        ok = np.isfinite(pred) & np.isfinite(y)
        pred, y = pred[ok], y[ok]
        if len(pred) == 0:
            raise ValueError("no calibration residuals: the validation split is empty")
        err = np.abs(y - pred)
        w = np.exp(-0.5 * ((_GRID[:, None] - pred[None, :]) / self.bandwidth) ** 2)
        scale = (w @ err) / np.maximum(w.sum(1), 1e-12)
        # A floor keeps a few lucky residuals from making a near-zero width.
        self.scale_ = np.maximum(scale, max(1.0, 0.25 * float(err.mean())))
        self.n_ = int(len(pred))
        self.q_ = conformal_quantile(err / self._scale(pred), self.level)
        return self

    def _scale(self, pred: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(pred, float), _GRID, self.scale_)

    def half_width(self, pred: np.ndarray, male: np.ndarray | None = None) -> np.ndarray:
        if not hasattr(self, "q_"):
            raise RuntimeError("NormalisedConformal is not fitted: call fit() first")
        return self.q_ * self._scale(pred)

    def interval(self, pred: np.ndarray, male: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        pred = np.asarray(pred, float)
        h = self.half_width(pred)
        return np.maximum(0.0, pred - h), pred + h

    def cross_fit_coverage(self, pred: np.ndarray, y: np.ndarray, male: np.ndarray, folds: int = 5,
                           seed: int = 0, repeats: int = 1) -> dict:
        return _cross_fit(lambda: NormalisedConformal(self.level, self.bandwidth, self.band_edges),
                          pred, y, male, folds, seed, repeats)

    def grouping(self) -> str:
        return (f"one quantile of |error| / typical error at the predicted age (Gaussian kernel, "
                f"{self.bandwidth:g} months), so the width follows age")

    def describe(self, group: str | None = None) -> str:
        text = f"{NORMALISED_METHOD} {100 * self.level:g}%"
        return text if group is None else f"{text}, width for this predicted age ({self.n_} validation images)"

    def to_dict(self) -> dict:
        return {"method": NORMALISED_METHOD, "level": self.level, "bandwidth_months": self.bandwidth,
                "band_edges_months": list(self.band_edges), "n": self.n_, "q": self.q_,
                "grid_months": _GRID.tolist(), "scale_months": [round(float(s), 4) for s in self.scale_]}

    @classmethod
    def from_dict(cls, d: dict) -> NormalisedConformal:
        c = cls(float(d["level"]), float(d["bandwidth_months"]), tuple(d["band_edges_months"]))
        c.n_, c.q_ = int(d["n"]), float(d["q"])
        c.scale_ = np.interp(_GRID, np.asarray(d["grid_months"], float), np.asarray(d["scale_months"], float))
        return c


def _cross_fit(make, pred: np.ndarray, y: np.ndarray, male: np.ndarray, folds: int = 5, seed: int = 0,
               repeats: int = 1) -> dict:
    """Coverage of ``make()``'s intervals on calibration data measured honestly: each fold's
    images get intervals fitted on the other folds. Also by 2-year band of the true age,
    which is what a user reads coverage by. ``repeats`` > 1 averages that many random fold
    assignments, which steadies the per-band figures that choose a method."""
    pred, y, male = np.asarray(pred, float), np.asarray(y, float), np.asarray(male, bool)
    n = len(pred)
    runs = []
    for r in range(repeats):
        order = np.random.default_rng(seed + r).permutation(n)
        lo, hi = np.zeros(n), np.zeros(n)
        for k in range(folds):
            test = order[k::folds]
            train = np.setdiff1d(order, test)
            if len(train) == 0 or len(test) == 0:
                continue
            lo[test], hi[test] = make().fit(pred[train], y[train], male[train]).interval(pred[test], male[test])
        runs.append(interval_metrics(y, lo, hi) if n else {})
    mean = lambda key: float(np.mean([m[key] for m in runs])) if n else None  # noqa: E731
    bins = runs[0].get("coverage_by_age_bin", {}) if n else {}
    return {"coverage": mean("interval_coverage"), "width_months": mean("interval_width_months"), "n": int(n),
            "folds": folds, "repeats": repeats,
            "coverage_by_age_bin": {b: float(np.mean([m["coverage_by_age_bin"][b] for m in runs])) for b in bins},
            "n_by_age_bin": runs[0].get("n_by_age_bin", {}) if n else {}}


def worst_band(check: dict, min_n: int = 30) -> float:
    """The lowest cross-fit coverage among true-age bands with at least ``min_n`` images."""
    cov, n = check.get("coverage_by_age_bin") or {}, check.get("n_by_age_bin") or {}
    vals = [c for b, c in cov.items() if n.get(b, 0) >= min_n and c is not None]
    return min(vals) if vals else float(check.get("coverage") or 0.0)


def conformal_from_dict(d: dict) -> MondrianConformal | NormalisedConformal:
    """The fitted interval method stored in calibration.json (Mondrian when unnamed: older runs)."""
    return NormalisedConformal.from_dict(d) if d.get("method") == NORMALISED_METHOD else MondrianConformal.from_dict(d)


def choose_conformal(pred: np.ndarray, y: np.ndarray, male: np.ndarray, level: float = DEFAULT_LEVEL,
                     floor: float = 0.90, repeats: int = 10) -> tuple[MondrianConformal | NormalisedConformal, dict]:
    """Fit each candidate on all validation residuals and keep the narrowest whose cross-fit
    coverage (5 folds, ``repeats`` fold assignments averaged) reaches ``floor`` in every
    true-age band of 30 or more images; if none does, the one with the best worst band.
    Per-band coverage is what a run is judged on, and only validation data decides.
    Returns the chosen method and every candidate's cross-fit figures."""
    candidates = [MondrianConformal(level)] + [NormalisedConformal(level, bw) for bw in NORMALISED_BANDWIDTHS]
    checks = []
    for c in candidates:
        check = c.cross_fit_coverage(pred, y, male, repeats=repeats)
        check.update(method=c.describe(), grouping=c.grouping(), worst_band=worst_band(check))
        checks.append(check)
    ok = [i for i, ch in enumerate(checks) if ch["worst_band"] >= floor]
    best = (min(ok, key=lambda i: checks[i]["width_months"]) if ok
            else max(range(len(checks)), key=lambda i: checks[i]["worst_band"]))
    return candidates[best].fit(pred, y, male), {"chosen": checks[best]["grouping"], "floor": floor,
                                                 "candidates": checks}
