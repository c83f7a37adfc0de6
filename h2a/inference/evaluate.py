"""A run's metrics on a dataset (``python -m h2a evaluate`` and the Evaluation page)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from h2a.run import resolve_run
from h2a.inference.arrays import predict_arrays
from h2a.inference.calibration import (
    DEFAULT_LEVEL,
    SEX_LOGIT_SHIFT,
    expected_calibration_error,
    predict_procedure,
    record_coverage,
    write_calibration,
)
from h2a.inference.conformal import Procedure
from h2a.inference.loading import LoadedRun, load_run
from h2a.inference.metrics import interval_metrics, json_safe
from h2a.progress import ProgressFn
from h2a.data.cache import build_cache
from h2a.data.datasets import load_dataset

LEGACY_Z = 1.96  # the old interval rule: estimate +/- 1.96 x max(TTA SD, validation RMSE)
LEGACY_METHOD = "legacy: estimate +/- 1.96 x max(TTA SD, validation RMSE)"


@dataclass
class EvalResult:
    metrics: dict
    predictions: pd.DataFrame  # id, male, boneage, predicted, error (or p_male...), worst first
    run: LoadedRun
    cache: object  # the TensorCache the images came from (for galleries and CAM)
    rows: np.ndarray  # cache rows aligned with the input order of predictions before sorting


@dataclass
class SplitImages:
    """A split's labelled rows and their cache rows, aligned (undecodable images dropped)."""

    labelled: pd.DataFrame
    cache: object
    rows: np.ndarray
    ok: np.ndarray  # per requested image: decoded
    data_path: Path
    same_data: bool  # the run's own dataset
    split: str


def rows_in_split(meta: dict, labelled: pd.DataFrame, split: str) -> pd.DataFrame:
    """The labelled rows of a run's saved ``split`` ids ('validation' / 'holdout'), or all of
    them for 'all': one rule for evaluation, calibration and the robustness report."""
    if split not in ("validation", "holdout"):
        return labelled
    wanted = {str(i) for i in meta.get("splits", {}).get(split, [])}
    if not wanted:
        raise ValueError(f"run {meta.get('name', '')} has no {split} ids "
                         "(train with --holdout-fraction for a holdout)")
    return labelled[labelled["id"].astype(str).isin(wanted)]


def split_images(run: LoadedRun, data: str | Path | None, split: str | None,
                 progress: ProgressFn | None = None) -> SplitImages:
    """The images a run is evaluated (or calibrated) on: ``data`` None = the run's own dataset;
    ``split`` 'all', 'validation' or 'holdout' (default: validation of its own folder, else all).
    ValueError when there are none, or none of them decodes."""
    own = str(Path(run.meta["dataset"]["path"]))
    data_path = Path(data) if data else Path(own)
    same = data_path.resolve() == Path(own).resolve()
    split = split or ("validation" if same and not data else "all")
    ds = load_dataset(data_path)
    labelled = rows_in_split(run.meta, run.task_obj.labelled(ds), split)
    if labelled.empty:
        raise ValueError(f"{ds.name}: no labelled images to evaluate on ({split})")
    cache = build_cache(ds, run.preprocess, progress=progress)
    rows = cache.rows(labelled["id"].astype(str).tolist())
    ok = cache.ok[rows]
    if not ok.any():  # no metric is defined on zero images: say so instead of NaN or None figures
        raise ValueError(f"{ds.name}: none of the {len(labelled)} labelled images could be decoded ({split}); "
                         f"`h2a stats --data {data_path}` lists the problems")
    return SplitImages(labelled[ok], cache, rows[ok], ok, data_path, same, split)


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    split: str | None = None,
    flip_tta: bool = False,
    tta_views: int = 0,
    device: torch.device | None = None,
    progress: ProgressFn | None = None,
    record: bool = True,
    site: str | None = None,
) -> EvalResult:
    """Metrics of a run on a dataset.

    ``data`` None means the run's own dataset. ``split``: 'all' (every labelled image,
    the default for another folder), 'validation' or 'holdout' (the run's saved ids,
    the default for its own folder is 'validation'). ``tta_views`` adds that many
    augmented copies (the run's own augmentation ranges) to the averaged prediction.

    Bone age: the interval figures (``interval_coverage``, ``interval_width_months``,
    ``coverage_by_age_bin``, ``interval_method``) use the run's conformal calibration, or the
    old rule for a run without one; ``interval_legacy`` always gives the old rule's figures
    on the same images. ``record`` keeps a held-out coverage measured with the calibrated
    procedure in the run folder (coverage.json) for the predict page. Sex: ``ece`` of the
    calibrated and ``ece_uncalibrated`` of the raw probabilities.

    ``site``: a fitted site profile of the run (``h2a adapt``) applied to every image:
    its normalisation statistics, correction and interval (``metrics["site"]`` names it).

    ``metrics`` is strict JSON: a figure that is undefined on these images (an SD of one
    image, an AUC with one sex) is None, never NaN. ValueError when no image decodes.
    """
    run = load_run(resolve_run(run_dir), device, site=site)
    if site and run.task != "boneage":
        raise ValueError(f"{run.path.name} is a {run.task} model: sites adapt bone-age models")
    images = split_images(run, data, split, progress)
    labelled, cache, rows, ok, data_path, same, split = (images.labelled, images.cache, images.rows, images.ok,
                                                          images.data_path, images.same_data, images.split)
    task = run.task_obj
    male = labelled["male"].astype(bool).to_numpy()
    raw, raw_sd = predict_arrays(run.model, cache.take(rows), male.astype(np.float32), run.norm, run.device,
                                 flip_tta=flip_tta, augment=run.preprocess, views=tta_views, progress=progress,
                                 spread=True)
    out = run.months(raw, male) if run.task == "boneage" else run.to_output(raw)
    ages = labelled["boneage"].to_numpy()
    metrics = task.metrics(out, ages, male)
    preds = task.predictions(labelled["id"], ages, male, out)
    procedure = Procedure(bool(flip_tta), int(tta_views))
    if run.task == "boneage":
        sd_months = np.abs(run.months(raw + raw_sd, male) - out)
        extra, bounds = interval_figures(run, out, sd_months, ages, male, procedure, split, same)
        metrics.update(extra)
        by_id = dict(zip(labelled["id"].astype(str), zip(*bounds)))
        preds["interval_low"] = [by_id[str(i)][0] for i in preds["id"]]
        preds["interval_high"] = [by_id[str(i)][1] for i in preds["id"]]
        preds["covered"] = (preds["boneage"] >= preds["interval_low"]) & (preds["boneage"] <= preds["interval_high"])
    else:
        metrics.update(sex_calibration_figures(run, raw, male, procedure))
        p_raw = dict(zip(labelled["id"].astype(str), run.to_output(raw, calibrated=False)))
        preds["p_male_raw"] = [float(p_raw[str(i)]) for i in preds["id"]]
    metrics.update(run=run.path.name, data=str(data_path), split=split, flip_tta=flip_tta, tta_views=tta_views,
                   n_failed_images=int((~ok).sum()), site=run.site.name if run.site else None,
                   site_parts=run.site.parts if run.site else None)
    if (record and run.task == "boneage" and split == "holdout" and same and run.calibration and run.site is None
            and not metrics.get("interval_procedure_mismatch")):
        record_coverage(run.path, run.calibration, split, str(data_path), metrics["n"],
                        metrics["interval_coverage"], metrics["interval_width_months"])
    return EvalResult(json_safe(metrics), preds, run, cache, rows)


def interval_figures(run: LoadedRun, pred: np.ndarray, sd_months: np.ndarray, ages: np.ndarray, male: np.ndarray,
                     procedure: Procedure, split: str, same_data: bool) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """The interval keys of a bone-age evaluation and each image's (low, high).

    The run's conformal calibration when it has one (saying whether this evaluation's
    procedure differs from the calibrated one, and whether the images are the calibration
    set itself), else the old rule; the old rule's figures are always in ``interval_legacy``.
    """
    rmse = (run.meta.get("metrics") or {}).get("rmse") or 0.0
    half = LEGACY_Z * np.maximum(sd_months, rmse)
    legacy_lo, legacy_hi = np.maximum(0.0, pred - half), pred + half
    legacy = {"method": LEGACY_METHOD, "validation_rmse": rmse,
              **interval_metrics(ages, legacy_lo, legacy_hi)}
    legacy.pop("n_by_age_bin")
    conf = run.conformal
    out: dict = {"interval_legacy": legacy}
    if conf is None:
        out.update({k: v for k, v in legacy.items() if k.startswith(("interval_", "coverage_", "width_"))})
        out["interval_method"] = {"method": LEGACY_METHOD, "level": 0.95, "grouping": "none (one rule for every image)",
                                  "procedure": procedure.to_dict(), "note": "this run has no conformal calibration "
                                  "(trained before it existed): run h2a calibrate"}
        out["interval_procedure_mismatch"] = False
        return out, (legacy_lo, legacy_hi)
    lo, hi = conf.interval(pred, male)
    out.update(interval_metrics(ages, lo, hi, conf.groups_of(pred, male)))
    out.pop("n_by_age_bin")  # the same bands as regression_metrics' n_by_age_bin, already in the metrics
    calibrated = run.calibrated_procedure
    mismatch = calibrated != procedure
    out["interval_method"] = {"method": conf.describe(), "level": conf.level, "grouping": conf.grouping(),
                              "procedure": calibrated.to_dict(), "procedure_text": calibrated.describe(),
                              "calibrated_on": f"validation split ({conf.n_} images)",
                              "calibration_id": run.calibration.get("id")}
    out["interval_procedure_mismatch"] = mismatch
    if mismatch:
        out["interval_method"]["note"] = (f"calibrated for {calibrated.describe()}, evaluated with "
                                          f"{procedure.describe()}: run h2a calibrate with this procedure")
    if split == "validation" and same_data:
        out["interval_in_sample"] = True
        out["interval_method"]["in_sample_note"] = ("these images are the calibration set itself: coverage is at "
                                                    "least the level by construction; see the holdout split")
    return out, (lo, hi)


def sex_calibration_figures(run: LoadedRun, raw: np.ndarray, male: np.ndarray, procedure: Procedure) -> dict:
    """ECE (15 bins) of the calibrated and the raw probabilities, and what calibrated them."""
    y = np.asarray(male, float)
    scaler = run.task_obj.scaler
    calibrated = run.calibrated_procedure
    return {
        "ece": expected_calibration_error(y, run.to_output(raw)),
        "ece_uncalibrated": expected_calibration_error(y, run.to_output(raw, calibrated=False)),
        "calibration": {"method": scaler.describe(), "procedure": calibrated.to_dict() if calibrated else None,
                        "procedure_mismatch": calibrated != procedure}
        if scaler is not None else {"method": "none (this run has no calibration: run h2a calibrate)"},
    }


# ---------------------------------------------------------------- calibrating a run
# Beside evaluation, not in h2a.inference.calibration: that module is the calibration
# maths and file, which the engine's tasks and the loader need without this workflow.

def calibrate_run(run_dir: str | Path, *, flip_tta: bool = False, views: int | None = None,
                  level: float = DEFAULT_LEVEL, shift: bool = SEX_LOGIT_SHIFT, device=None, progress=None,
                  write: bool = True) -> dict:
    """Refit a finished run's calibration on its validation split for another procedure
    (``h2a calibrate``): ``views`` None = the predict default (DEFAULT_TTA - 1 copies).

    Returns the calibration.json content (written to the run folder unless ``write=False``).
    """
    run = load_run(resolve_run(run_dir), device)
    procedure = Procedure(bool(flip_tta), predict_procedure().views if views is None else int(views))
    images = split_images(run, None, "validation", progress)
    male = images.labelled["male"].astype(bool).to_numpy()
    raw = predict_arrays(run.model, images.cache.take(images.rows), male.astype(np.float32), run.norm, run.device,
                         flip_tta=procedure.flip_tta, augment=run.preprocess, views=procedure.views,
                         progress=progress)
    ages = images.labelled["boneage"].to_numpy(dtype=float)
    cal = run.task_obj.calibrate(raw, ages, male, procedure, level, shift=shift)
    if write:
        write_calibration(run.path, cal)
    return cal
