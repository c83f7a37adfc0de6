"""``h2a adapt``: fit a run's site profile on images from one source, judged by cross-validation.

The profile's parts and how they are stored live in ``h2a.inference.site_profile``; this
module decides which parts a site gets, honestly: every part is judged by K-fold
cross-validation on the site's own images (folds by child: in the RSNA layout one image is
one child), repeated with several fold assignments, and a part that does not beat "no
adaptation" there is left out. What each fold sees is fitted on the other folds only,
BatchNorm statistics included.

* Labelled images (a label CSV): BatchNorm statistics, then the sex-specific correction,
  then the interval, each on top of the parts kept before it.
* Unlabelled images (a folder of radiographs): the BatchNorm statistics alone; with no
  labels nothing can judge them, so the report says how far they move the estimates and
  that they were not judged.
* Few images: a labelled site needs ``MIN_LABELLED`` images (below that the correction's
  cross-validated gain was not distinguishable from noise on the 53 full-resolution RSNA
  images: ``bench/bench_sites.py --curve``), an unlabelled one ``MIN_IMAGES``.

Core module: no streamlit.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from h2a import __version__
from h2a.data.transforms import array_input
from h2a.inference.arrays import predict_arrays
from h2a.inference.calibration import predict_procedure
from h2a.inference.conformal import Procedure
from h2a.inference.loading import LoadedRun, load_run
from h2a.inference.metrics import interval_metrics
from h2a.inference.site_profile import (
    CORRECTION_FORMS,
    SexCorrection,
    SiteError,
    SiteInterval,
    bn_buffers,
    site_dir,
    valid_site_name,
    write_site,
)
from h2a.progress import ProgressFn, report
from h2a.data.cache import build_cache
from h2a.data.datasets import Dataset, DatasetError, _index_images, load_dataset
from h2a.data.imageio import ImageReadError, read_header
from h2a.run import resolve_run
from h2a.data.datasets import load_dataset

__all__ = ["FOLDS", "MIN_IMAGES", "MIN_LABELLED", "REPEATS", "SiteImages", "adabn_stats", "cross_validate",
           "fit_site", "site_images"]

MIN_LABELLED = 20  # labelled images a correction is fitted from (see the module docstring)
MIN_IMAGES = 16  # images BatchNorm statistics are re-estimated from
FOLDS = 5
REPEATS = 3  # fold assignments averaged: 53 images split 5 ways give noisy single figures
BN_BATCH = 128  # images per statistics batch (one batch for a site of 64 images or fewer, with mirrors)
INTERVAL_SLACK = 0.02  # a run interval within 2 points of the level on the site is left alone
AUTO_FACTOR = 4  # "much larger than the training images": the longer side at least 4x theirs


# ---------------------------------------------------------------- the site's images

@dataclass
class SiteImages:
    """A site's decodable images at the run's preprocessing, with labels where known."""

    ids: list[str]
    u8: np.ndarray  # (N, S, S) uint8, the run's own preprocessing
    male: np.ndarray | None  # (N,) bool, None for an unlabelled folder
    age: np.ndarray | None  # (N,) months
    data_path: Path
    data_name: str
    fingerprint: str
    n_failed: int
    problems: list[str]
    paths: list[str]  # the image files, in ``ids`` order (their sizes go into site.json)

    @property
    def labelled(self) -> bool:
        return self.age is not None

    def __len__(self) -> int:
        return len(self.ids)


def _image_folder(root: Path):
    """A label-less folder of radiographs as a Dataset (every image unlabelled)."""
    index, skipped = _index_images(root)
    rows = [{"id": stem, "split": "test", "boneage": np.nan, "male": None, "path": str(sorted(paths)[0]),
             "source": "", "line": 0} for stem, paths in sorted(index.items())]
    meta = pd.DataFrame(rows, columns=["id", "split", "boneage", "male", "path", "source", "line"])
    meta["boneage"] = meta["boneage"].astype(float)
    meta["male"] = meta["male"].astype("boolean")
    return Dataset(root=root, meta=meta, problems=list(skipped))


def site_images(run: LoadedRun, data: str | Path, *, unlabelled: bool = False,
                progress: ProgressFn | None = None) -> SiteImages:
    """The images of ``data`` (RSNA layout, or a plain folder of images), prepared as the run
    prepares its own; labels kept unless ``unlabelled`` or there are none."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise SiteError(f"{data}: not a folder of images")
    try:
        ds = load_dataset(root)
        rows = ds.labelled()
        if unlabelled or rows.empty:
            rows = ds.with_images()
            unlabelled = True
    except DatasetError as exc:
        if "no label CSV found" not in str(exc):
            raise SiteError(str(exc)) from exc
        ds = _image_folder(root)
        rows, unlabelled = ds.with_images(), True
    if rows.empty:
        raise SiteError(f"{root}: no images found")
    rows = rows.drop_duplicates("id")
    cache = build_cache(ds, run.preprocess, progress=progress)
    crow = cache.rows(rows["id"].astype(str).tolist())
    ok = cache.ok[crow]
    rows, crow = rows[ok], crow[ok]
    problems = [f"{p.item}: {p.problem}" for p in ds.problems]
    return SiteImages(
        ids=rows["id"].astype(str).tolist(), u8=np.asarray(cache.take(crow)),
        male=None if unlabelled else rows["male"].astype(bool).to_numpy(),
        age=None if unlabelled else rows["boneage"].to_numpy(dtype=float),
        data_path=root, data_name=root.name, fingerprint=ds.fingerprint, n_failed=int((~ok).sum()),
        problems=problems, paths=rows["path"].astype(str).tolist())


# ---------------------------------------------------------------- BatchNorm statistics (AdaBN)

@torch.no_grad()
def adabn_stats(model: nn.Module, u8: np.ndarray, norm, device: torch.device) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics of an unfolded model re-estimated on ``u8`` (and mirrors).

    A copy runs in eval mode except its BatchNorms, which normalise by batch statistics and
    accumulate a plain average of them (momentum None); dropout and stochastic depth stay
    off. One batch where the site is small, so the variance is the images' own."""
    m = copy.deepcopy(model).to(device).eval()
    bns = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm) and b.track_running_stats]
    if not bns:
        raise SiteError("this model has no BatchNorm layers to re-estimate")
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
        b.train()
    both = np.concatenate([u8, u8[:, :, ::-1]])
    sex = None
    for start in range(0, len(both), BN_BATCH):
        x = array_input(np.ascontiguousarray(both[start:start + BN_BATCH]), norm, device)
        if getattr(m, "use_sex", False):
            sex = torch.zeros(len(x), device=device)
        m(x, sex) if sex is not None else m(x)
    return bn_buffers(m)


def _months(run: LoadedRun, u8: np.ndarray, male: np.ndarray, procedure: Procedure) -> np.ndarray:
    raw = predict_arrays(run.model, u8, male.astype(np.float32), run.norm, run.device,
                         flip_tta=procedure.flip_tta, augment=run.preprocess, views=procedure.views)
    return np.asarray(run.to_output(raw), float)


# ---------------------------------------------------------------- cross-validation

def _folds(n: int, folds: int, repeats: int, seed: int) -> list[list[np.ndarray]]:
    """``repeats`` random assignments of n images (one per child) to ``folds`` folds."""
    out = []
    for r in range(repeats):
        order = np.random.default_rng(seed + r).permutation(n)
        out.append([np.sort(order[k::folds]) for k in range(folds)])
    return out


def _figures(y: np.ndarray, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
    err = pred - y
    iv = interval_metrics(y, lo, hi)
    return {"mae": float(np.mean(np.abs(err))), "bias": float(np.mean(err)),
            "mae_se": float(np.std(np.abs(err), ddof=1) / np.sqrt(len(err))) if len(err) > 1 else None,
            "coverage": iv.get("interval_coverage"), "width_months": iv.get("interval_width_months"),
            "n": int(len(y))}


def _paired_ci(a: np.ndarray, b: np.ndarray, seed: int = 0, n_boot: int = 2000) -> tuple[float, float, float]:
    """Mean of a - b and its 95% paired bootstrap interval (over images)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


@dataclass
class _Variant:
    """Out-of-fold estimates and interval bounds of one adaptation variant, per repeat."""

    pred: list[np.ndarray]
    lo: list[np.ndarray]
    hi: list[np.ndarray]

    def figures(self, y: np.ndarray) -> dict:
        per = [_figures(y, p, lo, hi) for p, lo, hi in zip(self.pred, self.lo, self.hi)]
        out = {k: (float(np.mean([f[k] for f in per])) if per[0][k] is not None else None)
               for k in ("mae", "bias", "mae_se", "coverage", "width_months")}
        out["n"] = per[0]["n"]
        return out

    def abs_err(self, y: np.ndarray) -> np.ndarray:
        """Each image's absolute error, averaged over the repeats (for paired comparisons)."""
        return np.mean([np.abs(p - y) for p in self.pred], axis=0)


@dataclass
class _Folds:
    """The site's images split into folds (``repeats`` assignments by child) and the three
    ways of judging a set of predictions on them, each fitted without the fold it judges."""

    plans: list
    y: np.ndarray
    male: np.ndarray
    conf: object  # the run's conformal calibration

    @property
    def n(self) -> int:
        return len(self.y)

    def splits(self):
        """(repeat, test ids, train ids) for every fold of every assignment."""
        for r, plan in enumerate(self.plans):
            for test in plan:
                yield r, test, np.setdiff1d(np.arange(self.n), test)

    def run_interval(self, preds: list[np.ndarray]) -> _Variant:
        bounds = [self.conf.interval(p, self.male) for p in preds]
        return _Variant(list(preds), [b[0] for b in bounds], [b[1] for b in bounds])

    def corrected(self, preds: list[np.ndarray], form: str) -> list[np.ndarray]:
        out = [np.empty(self.n) for _ in preds]
        for r, test, train in self.splits():
            p = preds[r]
            out[r][test] = SexCorrection(form).fit(p[train], self.y[train], self.male[train]).apply(
                p[test], self.male[test])
        return out

    def site_interval(self, preds: list[np.ndarray]) -> _Variant:
        lo, hi = [np.empty(self.n) for _ in preds], [np.empty(self.n) for _ in preds]
        for r, test, train in self.splits():
            p = preds[r]
            lo[r][test], hi[r][test] = SiteInterval(self.conf).fit(p[train], self.y[train], self.male[train]).interval(
                p[test], self.male[test])
        return _Variant(list(preds), lo, hi)


def _bn_predictions(run: LoadedRun, images: SiteImages, cv: _Folds, procedure: Procedure,
                    progress: ProgressFn | None) -> list[np.ndarray]:
    """Each assignment's predictions with every fold's BatchNorm statistics estimated on the
    other folds' images."""
    preds = [np.empty(cv.n) for _ in cv.plans]
    total = sum(len(plan) for plan in cv.plans)
    for done, (r, test, train) in enumerate(cv.splits(), 1):
        stats = adabn_stats(run.model, images.u8[train], run.norm, run.device)
        fold_run = load_run(run.path, run.device, bn_stats=stats)
        preds[r][test] = _months(fold_run, images.u8[test], images.male[test], procedure)
        report(progress, done, total, "cross-validating the BatchNorm statistics")
    return preds


def _choose_estimate(variants: dict[str, _Variant], figs: dict[str, dict]) -> tuple[str, str, dict, dict]:
    """(image part, correction form, keep, why) for the statistics and the correction.

    Every combination of the statistics and a correction is cross-validated, and the one with
    the lowest MAE wins (a part that does not beat going without it is never in the winner).
    Judging the parts one at a time misses that a correction can undo the same shift the
    statistics do: on the 53 full-resolution RSNA images the statistics alone won (9.68 vs
    10.36), the correction alone beat both (8.73).
    """
    combos = {("none", None): "none", ("bn", None): "bn"}
    for form in CORRECTION_FORMS:
        combos[("none", form)] = f"correction ({form})"
        combos[("bn", form)] = f"bn + correction ({form})"
    (image_part, form), best = min(combos.items(), key=lambda kv: (figs[kv[1]]["mae"], kv[0][1] is not None,
                                                                  kv[0][0] == "bn"))
    form = form or min(CORRECTION_FORMS, key=lambda f: figs[f"correction ({f})"]["mae"])
    keep = {"bn": image_part == "bn", "correction": combos[(image_part, None)] != best}
    without_bn = combos[("none", form if keep["correction"] else None)]
    with_bn = combos[("bn", form if keep["correction"] else None)]
    why = {"bn": f"cross-validated MAE {figs[with_bn]['mae']:.2f} with it against {figs[without_bn]['mae']:.2f} "
                 f"without it ({'with' if keep['correction'] else 'without'} the correction)"}
    corr_name, plain_name = combos[(image_part, form)], combos[(image_part, None)]
    why["correction"] = (f"{form}: cross-validated MAE {figs[corr_name]['mae']:.2f} with it against "
                         f"{figs[plain_name]['mae']:.2f} without it (the best of {len(combos)} combinations of the "
                         "parts; the winner of several is a little optimistic)")
    return image_part, form, keep, why


def cross_validate(run: LoadedRun, images: SiteImages, *, procedure: Procedure | None = None, folds: int = FOLDS,
                   repeats: int = REPEATS, seed: int = 0, progress: ProgressFn | None = None) -> dict:
    """Every part alone and the kept ones together, cross-validated; which parts to keep.

    ``run`` must be loaded unfolded (``fold_bn=False``) so each fold can re-estimate its
    BatchNorm statistics. Returns {"variants": name -> figures, "differences": name -> paired
    MAE difference against none with its CI, "keep": part -> bool, "why": part -> text,
    "form": the correction form chosen}.
    """
    procedure = procedure or predict_procedure()
    y, male = images.age, images.male
    if run.conformal is None:
        raise SiteError(f"run {run.path.name} has no conformal calibration to adapt: run h2a calibrate first")
    cv = _Folds(_folds(len(images), folds, repeats, seed), y, male, run.conformal)
    none_preds = [_months(load_run(run.path, run.device), images.u8, male, procedure)] * repeats
    bn_preds = _bn_predictions(run, images, cv, procedure, progress)
    variants = {"none": cv.run_interval(none_preds), "bn": cv.run_interval(bn_preds)}
    for form in CORRECTION_FORMS:
        variants[f"correction ({form})"] = cv.run_interval(cv.corrected(none_preds, form))
    variants["interval"] = cv.site_interval(none_preds)
    for form in CORRECTION_FORMS:
        variants[f"bn + correction ({form})"] = cv.run_interval(cv.corrected(bn_preds, form))
    figs = {k: v.figures(y) for k, v in variants.items()}
    image_part, form, keep, why = _choose_estimate(variants, figs)
    base = bn_preds if keep["bn"] else none_preds
    kept_name = (f"bn + correction ({form})" if image_part == "bn" else f"correction ({form})")
    centre = list(variants[kept_name].pred) if keep["correction"] else base
    own, site = cv.run_interval(centre).figures(y), cv.site_interval(centre).figures(y)
    level = run.conformal.level
    own_off = own["coverage"] < level - INTERVAL_SLACK
    keep["interval"] = bool(site["coverage"] >= level - INTERVAL_SLACK
                            and (own_off or site["width_months"] < own["width_months"]))
    why["interval"] = (f"cross-validated coverage {site['coverage']:.3f} (mean width {site['width_months']:.1f} "
                       f"months) against the run's own {own['coverage']:.3f} ({own['width_months']:.1f}) at "
                       f"level {level:g}")
    variants["all kept"] = cv.site_interval(centre) if keep["interval"] else cv.run_interval(centre)
    figs["all kept"] = variants["all kept"].figures(y)
    none_err = variants["none"].abs_err(y)
    diffs = {}
    for name, v in variants.items():
        if name != "none":
            d, lo, hi = _paired_ci(v.abs_err(y), none_err, seed)
            diffs[name] = {"mae_difference": d, "ci95": [lo, hi]}
    return {"variants": figs, "differences": diffs, "keep": keep, "why": why, "form": form,
            "folds": folds, "repeats": repeats, "procedure": procedure.to_dict()}


# ---------------------------------------------------------------- fitting and storing

def _median_side(paths: list[str], limit: int = 30) -> int | None:
    """The median longer side (px) of up to ``limit`` image files, from their headers."""
    sides = []
    for p in paths[:limit]:
        try:
            h = read_header(p)
            sides.append(max(int(h.width), int(h.height)))
        except (ImageReadError, OSError, ValueError, AttributeError):
            continue
    return int(np.median(sides)) if sides else None


def _training_side(run: LoadedRun) -> int | None:
    """The median longer side of the run's training images (its dataset's files, when present)."""
    data = (run.meta.get("dataset") or {}).get("path")
    if not data or not Path(data).is_dir():
        return None
    try:
        paths = load_dataset(data).with_images()["path"].astype(str).tolist()
    except (OSError, ValueError):
        return None
    return _median_side(paths)


def fit_site(run_dir: str | Path, data: str | Path, name: str, *, unlabelled: bool = False,
             default_for_large: bool = False, device: torch.device | None = None, folds: int = FOLDS,
             repeats: int = REPEATS, seed: int = 0, progress: ProgressFn | None = None) -> dict:
    """Fit site ``name`` of a bone-age run on ``data`` and store it in ``RUN/sites/NAME``.

    Returns site.json's content (parts kept, why, the cross-validated report). SiteError
    (one line) when the run or the images cannot make a site. ``default_for_large``: uploads
    much larger than the run's training images (``AUTO_FACTOR`` x their median side) get this
    site by default, as the ``fullres`` profile does.
    """
    valid_site_name(name)
    t0 = time.perf_counter()
    path = resolve_run(run_dir)
    run = load_run(path, device, fold_bn=False)
    if run.task != "boneage":
        raise SiteError(f"{path.name} is a {run.task} model: sites adapt bone-age models")
    images = site_images(run, data, unlabelled=unlabelled, progress=progress)
    n = len(images)
    if images.labelled and n < MIN_LABELLED:
        raise SiteError(f"{images.data_name}: {n} labelled images, too few to fit or judge a site (at least "
                        f"{MIN_LABELLED}; below that the correction's gain is not distinguishable from noise); "
                        "add images, or use --unlabelled to re-estimate only the normalisation statistics")
    if n < MIN_IMAGES:
        raise SiteError(f"{images.data_name}: {n} decodable images, too few to re-estimate the normalisation "
                        f"statistics (at least {MIN_IMAGES})")
    procedure = predict_procedure()
    parts: dict[str, dict] = {}
    stats = adabn_stats(run.model, images.u8, run.norm, run.device)
    info: dict = {"name": name, "run": path.name, "task": "boneage", "h2a_version": __version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "fitted_on": {"data": str(images.data_path), "data_name": images.data_name, "n_images": n,
                                "labelled": images.labelled, "fingerprint": images.fingerprint,
                                "n_failed": images.n_failed, "median_side_px": _median_side(images.paths)},
                  "procedure": procedure.to_dict()}
    if images.labelled:
        cv = cross_validate(run, images, procedure=procedure, folds=folds, repeats=repeats, seed=seed,
                            progress=progress)
        keep = cv["keep"]
        parts["bn"] = {"kept": keep["bn"], "why": cv["why"]["bn"], "n_images": n}
        bn_run = load_run(path, run.device, bn_stats=stats if keep["bn"] else {})
        centre = _months(bn_run, images.u8, images.male, procedure)
        corr = SexCorrection(cv["form"]).fit(centre, images.age, images.male)
        parts["correction"] = {"kept": keep["correction"], "why": cv["why"]["correction"], "model": corr.to_dict(),
                               "text": corr.describe()}
        if keep["correction"]:
            centre = corr.apply(centre, images.male)
        iv = SiteInterval(run.conformal, site=name).fit(centre, images.age, images.male)
        parts["interval"] = {"kept": keep["interval"], "why": cv["why"]["interval"], **iv.to_dict()}
        info["report"] = {"before": cv["variants"]["none"], "after": cv["variants"]["all kept"],
                          "variants": cv["variants"], "differences": cv["differences"],
                          "folds": folds, "repeats": repeats,
                          "how": f"{folds}-fold cross-validation by child, {repeats} fold assignments averaged; "
                                 "each fold's parts fitted on the other folds only"}
    else:
        plain = load_run(path, run.device)
        adapted = load_run(path, run.device, bn_stats=stats)
        unknown = np.zeros(n, bool)
        before = np.concatenate([_months(plain, images.u8, unknown, procedure),
                                 _months(plain, images.u8, ~unknown, procedure)])
        after = np.concatenate([_months(adapted, images.u8, unknown, procedure),
                                _months(adapted, images.u8, ~unknown, procedure)])
        parts["bn"] = {"kept": True, "n_images": n,
                       "why": "unlabelled images: applied without judgement (no labels to judge it on); fit the "
                              "site on labelled images to have it judged"}
        info["report"] = {"unlabelled": True, "mean_estimate_before": float(before.mean()),
                          "mean_estimate_after": float(after.mean()),
                          "mean_shift_months": float((after - before).mean()),
                          "how": "estimates of the site's images averaged over both sexes, before and after"}
    info["parts"] = parts
    if default_for_large:
        side = _training_side(run) or run.preprocess.size
        info["auto"] = {"min_side_px": int(AUTO_FACTOR * side),
                        "why": f"uploads whose longer side is at least {AUTO_FACTOR}x the training images' "
                               f"({side} px) get this site by default"}
    info["seconds"] = round(time.perf_counter() - t0, 1)
    write_site(site_dir(path, name), info, stats if parts["bn"]["kept"] else None)
    return info
