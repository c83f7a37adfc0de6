"""Does arm A beat arm B? A paired bootstrap on the same held-out images.

Two runs evaluated on the same images make errors that are strongly correlated (a hard hand
is hard for both), so their difference is far better determined than either MAE alone.
The paired bootstrap keeps that pairing: each resample draws images (with replacement) and
scores *both* arms on the drawn images, so the interval is for the difference itself.

``paired_bootstrap`` works on arrays; ``arm_comparisons`` takes each arm's
``holdout_predictions.csv`` frames (one per seed), pairs them by image id against a
reference arm and adds the plain-language verdict the page, ``h2a study show`` and the
report print. Metrics:

* ``mae`` (bone age, months, lower is better): the per-image absolute-error differences
  are resampled, so 2,000 resamples of 1,101 images is one (chunked) numpy gather;
* ``auc`` (sex, higher is better): both AUCs are computed on the same resampled images
  (rank formula, vectorised over resamples); resamples with one class only are skipped.

Core module: no streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["METRICS", "PREDICTION_FILES", "MetricSpec", "arm_comparisons", "combine_seeds", "paired_bootstrap",
           "read_predictions", "score_predictions", "verdict", "weighted_auc"]

# A run's predictions on a split, as the comparisons read them (written by
# ``h2a.studies.predictions.save_predictions``).
PREDICTION_FILES = {"holdout": "holdout_predictions.csv", "validation": "validation_predictions.csv"}
CHUNK = 250  # resamples drawn at a time: bounded memory (250 x n indices) on any n


@dataclass(frozen=True)
class MetricSpec:
    """What a comparison metric reads from a predictions frame and how to say it."""

    name: str
    label: str  # "MAE"
    column: str  # the predictions column: "pred" (months) or "prob" (P(male))
    higher_is_better: bool
    unit: str  # " months" or ""
    digits: int  # decimals in a verdict


METRICS: dict[str, MetricSpec] = {
    "mae": MetricSpec("mae", "MAE", "pred", higher_is_better=False, unit=" months", digits=1),
    "auc": MetricSpec("auc", "AUC", "prob", higher_is_better=True, unit="", digits=3),
}


def _spec(metric: str) -> MetricSpec:
    try:
        return METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}") from None


# ---------------------------------------------------------------- the bootstrap

def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` images is drawn in each resample ``idx`` (R, n): float32 (R, n),
    exact for these small integers, and half the memory traffic of int64."""
    r = idx.shape[0]
    flat = (np.arange(r)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float32)


def weighted_auc(y: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row of image weights ``counts`` (R, n): a resample as a count per image.

    No re-ranking per resample: images are sorted by score once and tied scores summed into
    one group, then AUC = sum over groups of positives x (negatives below + half the tied
    negatives) / (positives x negatives) (Mann-Whitney, ties count 1/2). NaN for a row with
    one class only.
    """
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    c = counts[:, order]
    pos = c * y[order].astype(c.dtype)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    if len(starts) < len(s):  # ties: one column per distinct score
        pos, c = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(c, starts, axis=1)
    neg = c - pos
    below = np.cumsum(neg, axis=1, dtype=np.float64) - neg
    n1, n0 = pos.sum(axis=1, dtype=np.float64), neg.sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def _resampled_differences(y: np.ndarray, a: np.ndarray, b: np.ndarray, spec: MetricSpec, n_boot: int,
                           rng: np.random.Generator) -> np.ndarray:
    """metric(a) - metric(b) on ``n_boot`` resamples of the images (NaN where undefined).

    A resample is a row of counts per image (``_counts``): the MAE difference is then one
    matrix-vector product with the per-image differences of absolute errors, and both AUCs
    use the same rows, which is what makes the bootstrap paired."""
    n = len(y)
    out = np.empty(n_boot, dtype=float)
    per_image = np.abs(a - y) - np.abs(b - y) if spec.name == "mae" else None
    for start in range(0, n_boot, CHUNK):
        stop = min(n_boot, start + CHUNK)
        counts = _counts(rng.integers(0, n, size=(stop - start, n)), n)
        if per_image is not None:  # MAE(a) - MAE(b) = mean of the per-image differences
            out[start:stop] = counts.astype(np.float64) @ per_image / n
        else:
            out[start:stop] = weighted_auc(y, a, counts) - weighted_auc(y, b, counts)
    return out


def _metric(y: np.ndarray, p: np.ndarray, spec: MetricSpec) -> float:
    if spec.name == "mae":
        return float(np.mean(np.abs(p - y)))
    return float(weighted_auc(y, p, np.ones((1, len(y)), dtype=np.float32))[0])


def paired_bootstrap(y: Sequence[float], pred_a: Sequence[float], pred_b: Sequence[float], metric: str = "mae",
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """metric(a) - metric(b) on the same images, with a percentile bootstrap interval.

    ``y``: bone age in months (``mae``) or 1 = male / 0 = female (``auc``); ``pred_a`` /
    ``pred_b``: each arm's prediction for the same images, in the same order. Images with a
    missing value in any of the three are left out (``n`` says how many were used).

    Returns ``metric``, ``n``, ``value_a``, ``value_b``, ``difference`` (a - b on all
    images), ``ci_low`` / ``ci_high`` (percentile interval at ``level``), ``level``,
    ``n_boot`` (resamples used: for AUC those with both classes), ``p_value`` (two-sided
    share of resamples on the other side of 0, doubled and capped at 1: a p-value-like
    figure, not an exact test) and ``significant`` (the interval excludes 0).
    """
    spec = _spec(metric)
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    y, a, b = (np.asarray(v, dtype=float).ravel() for v in (y, pred_a, pred_b))
    if not len(y) == len(a) == len(b):
        raise ValueError(f"y, pred_a and pred_b differ in length: {len(y)}, {len(a)}, {len(b)}")
    ok = np.isfinite(y) & np.isfinite(a) & np.isfinite(b)
    y, a, b = y[ok], a[ok], b[ok]
    if len(y) < 2:
        raise ValueError(f"need at least 2 images with both predictions, got {len(y)}")
    if spec.name == "auc":
        if not np.isin(y, (0, 1)).all():
            raise ValueError("AUC needs labels 0 (female) / 1 (male)")
        if len(np.unique(y)) < 2:
            raise ValueError("AUC needs both sexes among the images, found one only")
        y = y.astype(int)
    value_a, value_b = _metric(y, a, spec), _metric(y, b, spec)
    diffs = _resampled_differences(y, a, b, spec, int(n_boot), np.random.default_rng(seed))
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        raise ValueError(f"no resample of these {len(y)} images has both classes: too few images for an AUC")
    alpha = (1 - level) / 2
    low, high = (float(v) for v in np.quantile(diffs, [alpha, 1 - alpha]))
    p_value = float(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
    return {"metric": spec.name, "n": len(y), "value_a": value_a, "value_b": value_b,
            "difference": value_a - value_b, "ci_low": low, "ci_high": high, "level": float(level),
            "n_boot": len(diffs), "p_value": p_value, "significant": bool(low > 0 or high < 0)}


# ---------------------------------------------------------------- arms of runs

def read_predictions(path) -> pd.DataFrame:
    """A run's ``holdout_predictions.csv`` or ``validation_predictions.csv`` (``id, y, pred``
    or ``id, y, prob``), ids as text."""
    frame = pd.read_csv(path, dtype={"id": str})
    missing = {"id", "y"} - set(frame.columns)
    if missing or not ({"pred", "prob"} & set(frame.columns)):
        raise ValueError(f"{path}: expected columns id, y and pred (or prob), found {', '.join(frame.columns)}")
    return frame


def score_predictions(frame: pd.DataFrame, metric: str = "mae") -> float:
    """The metric of one predictions frame (``read_predictions``) on all its images."""
    spec = _spec(metric)
    y, p = frame["y"].to_numpy(float), frame[spec.column].to_numpy(float)
    return _metric(y.astype(int) if spec.name == "auc" else y, p, spec)


def combine_seeds(frames: Sequence[pd.DataFrame], metric: str = "mae") -> pd.DataFrame:
    """One arm's seeds as one prediction per image: the mean over seeds, on the images every
    seed predicted (so each image averages the same number of runs).

    Indexed by id (text) with columns ``y`` and the metric's column. A seed whose labels
    disagree with another's for the same image raises: the runs were not on the same data.
    """
    spec = _spec(metric)
    if not frames:
        raise ValueError("an arm without finished runs has no predictions")
    parts = []
    for i, frame in enumerate(frames):
        if not {"id", "y", spec.column} <= set(frame.columns):
            raise ValueError(f"seed {i}: a {spec.label} comparison needs columns id, y and {spec.column}, "
                             f"found {', '.join(map(str, frame.columns))}")
        f = frame[["id", "y", spec.column]].copy()
        f["id"] = f["id"].astype(str)
        parts.append(f.drop_duplicates("id").set_index("id"))
    common = parts[0].index
    for p in parts[1:]:
        common = common.intersection(p.index)
    y = parts[0].loc[common, "y"].astype(float)
    for i, p in enumerate(parts[1:], 1):
        if not np.allclose(p.loc[common, "y"].astype(float), y, equal_nan=True):
            raise ValueError(f"seed {i} has other labels than seed 0 for the same images")
    preds = np.mean([p.loc[common, spec.column].astype(float).to_numpy() for p in parts], axis=0)
    return pd.DataFrame({"y": y.to_numpy(), spec.column: preds}, index=common)


def _number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def verdict(arm: str, reference: str, result: dict, n_seeds: tuple[int, int] = (1, 1)) -> str:
    """One sentence a reader can act on, e.g. "without-sex is 1.9 months worse than with-sex
    (95% CI 1.2 to 2.6): a real difference on these 1,101 images"."""
    spec = _spec(result["metric"])
    d, lo, hi = result["difference"], result["ci_low"], result["ci_high"]
    word = "better" if (d > 0) == spec.higher_is_better else "worse"
    size = _number(abs(d), spec.digits)
    if float(size.replace(",", "")) == 0:
        head = f"{arm} and {reference} score the same {spec.label} to {spec.digits} decimal(s)"
    elif spec.name == "mae":
        head = f"{arm} is {size}{spec.unit} {word} than {reference}"
    else:
        head = f"{arm} is {word} than {reference} by {size} {spec.label}"
    ci = f"{100 * result['level']:.0f}% CI {_number(lo, spec.digits)} to {_number(hi, spec.digits)}"
    where = f"these {result['n']:,} images"
    if max(n_seeds) > 1:
        where += f" (predictions averaged over {n_seeds[0]} and {n_seeds[1]} seeds)"
    if result["significant"]:
        return f"{head} ({ci}): a real difference on {where}"
    return f"{head}, but the {ci} includes 0: no clear difference on {where}"


def _failed(arm: str, reference: str, spec: MetricSpec, n_arm: int, n_ref: int, why: str) -> dict:
    return {"arm": arm, "reference": reference, "metric": spec.name, "n_images": 0, "n_seeds_arm": n_arm,
            "n_seeds_reference": n_ref, "value_arm": None, "value_reference": None, "difference": None,
            "ci_low": None, "ci_high": None, "level": None, "p_value": None, "significant": False,
            "seeds": None, "verdict": f"{arm} against {reference}: no comparison ({why})", "error": why}


def arm_comparisons(arms: Mapping[str, Sequence[pd.DataFrame]], reference: str, metric: str = "mae", *,
                    n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[dict]:
    """Every arm against ``reference``, paired on the held-out images both predicted.

    ``arms``: arm name -> that arm's prediction frames, one per seed (``holdout_predictions.csv``
    read with ``read_predictions``). With several seeds an arm's per-image predictions are
    averaged over its seeds first (a seed ensemble: its MAE is lower than a single seed's;
    ``seeds`` in the result says how many on each side).

    Returns one dict per non-reference arm, in ``arms`` order: ``arm``, ``reference``,
    ``metric``, ``n_images``, ``n_seeds_arm``, ``n_seeds_reference``, ``value_arm``,
    ``value_reference``, ``difference`` (arm - reference), ``ci_low``, ``ci_high``,
    ``level``, ``p_value``, ``significant``, ``seeds`` (how predictions were combined) and
    ``verdict`` (plain language). An arm that cannot be compared (no runs, no images in
    common) gets None figures, ``error`` and a verdict that says why, never an exception.
    """
    spec = _spec(metric)
    if reference not in arms:
        raise ValueError(f"reference arm {reference!r} is not among the arms ({', '.join(arms) or 'none'})")
    ref_frames = arms[reference]
    try:
        ref = combine_seeds(ref_frames, metric)
    except ValueError as exc:
        return [_failed(a, reference, spec, len(f), len(ref_frames), f"reference: {exc}")
                for a, f in arms.items() if a != reference]
    out = []
    for name, frames in arms.items():
        if name == reference:
            continue
        try:
            arm = combine_seeds(frames, metric)
        except ValueError as exc:
            out.append(_failed(name, reference, spec, len(frames), len(ref_frames), str(exc)))
            continue
        common = arm.index.intersection(ref.index)
        y_arm, y_ref = arm.loc[common, "y"].to_numpy(float), ref.loc[common, "y"].to_numpy(float)
        if not np.allclose(y_arm, y_ref, equal_nan=True):
            out.append(_failed(name, reference, spec, len(frames), len(ref_frames),
                               "the arms have other labels for the same image ids: not the same data"))
            continue
        try:
            res = paired_bootstrap(y_ref, arm.loc[common, spec.column], ref.loc[common, spec.column], metric,
                                   n_boot=n_boot, seed=seed, level=level)
        except ValueError as exc:
            why = "no held-out images in common" if len(common) == 0 else str(exc)
            out.append(_failed(name, reference, spec, len(frames), len(ref_frames), why))
            continue
        n_seeds = (len(frames), len(ref_frames))
        seeds = ("one run per arm" if max(n_seeds) == 1 else
                 f"per-image predictions averaged over {n_seeds[0]} seed(s) of {name} and "
                 f"{n_seeds[1]} of {reference} (seed ensembles)")
        out.append({"arm": name, "reference": reference, "metric": spec.name, "n_images": res["n"],
                    "n_seeds_arm": n_seeds[0], "n_seeds_reference": n_seeds[1], "value_arm": res["value_a"],
                    "value_reference": res["value_b"], "difference": res["difference"], "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"], "level": res["level"], "p_value": res["p_value"],
                    "significant": res["significant"], "seeds": seeds,
                    "verdict": verdict(name, reference, res, n_seeds)})
    return out
