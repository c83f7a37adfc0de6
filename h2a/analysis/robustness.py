"""Robustness report: does a run's answer survive the same radiograph made differently?

A model trained on one archive's images learns that archive's exposure, resampling and
compression along with the bones; real uploads vary in all of them. This module takes
labelled radiographs, perturbs each *original decoded image* (before the run's own
preprocessing, as a different scanner, export or viewer would have made it), saves it as
an 8-bit PNG (what a real file would be) and sends it through the ``Predictor`` exactly
as an upload: image checks, the run's ``prepare``, the model and the out-of-distribution
check. For each perturbation it reports the MAE, the bias, how far the answers moved from
the unperturbed ones, and the share of images the predictor flagged with a warning about
the image or the answer (context-only notes such as a missing chronological age do not
count: ``CONTEXT_CODES``). Whatever checks the predictor gains (inversion, rotation)
count here without a change.

Perturbations are sized in the file's own pixels, except the blur, which is sized in the
model's input pixels (1 px there) so it means the same for a thumbnail and a 2,000 px
original.

Core module: no streamlit. Its top level imports only numpy and OpenCV (the CLI builds
its parser from ``PERTURBATIONS`` on every command); torch, pandas and the decoder load
when a report runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from h2a.progress import ProgressFn, report
from h2a.data.datasets import load_dataset
from h2a.data.imageio import ImageReadError, read_image, to_uint8
from h2a.data.transforms import downscale_upscale, jpeg_roundtrip
from h2a.inference.evaluate import rows_in_split
from h2a.predict.predictor import Predictor
from h2a.run import resolve_run

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BASELINE",
    "CONTEXT_CODES",
    "PERTURBATIONS",
    "SPLITS",
    "Perturbation",
    "RobustnessReport",
    "encode_png",
    "perturbation_names",
    "robustness_report",
    "select_images",
]

BASELINE = "none"
SPLITS = ("all", "validation", "holdout")
KINDS = ("baseline", "benign", "degraded", "orientation")
BLUR_INPUT_PX = 1.0  # blur sigma in pixels of the model's input
NOISE_SD = 0.03  # Gaussian noise sd on the [0, 1] scale (about 8 grey levels of 255)
NOISE_SEED = 0
JPEG_QUALITY = 30
RESAMPLE_FACTOR = 0.5  # the down-up factor of the resampling-filter perturbations
LIMIT_SEED = 0  # the seeded sample --limit draws, so reruns compare the same images
PNG_LEVEL = 1  # fast PNG compression: the file is decoded once and thrown away
# Warning codes about the inputs or the clinical context, not about the image or the
# answer: a prediction carrying only these is not "flagged".
CONTEXT_CODES = frozenset({
    "ood_unchecked", "synthetic_model", "sex_mismatch", "no_chronological_age",
    "reference_extrapolated", "near_mature", "report_failed",
})


@dataclass(frozen=True)
class Perturbation:
    """One way the same radiograph could have been made.

    ``fn(img, input_size)`` maps a decoded float [0, 1] (H, W) image to another one;
    ``input_size`` is the run's model-input side, for perturbations sized in its pixels.
    """

    name: str
    kind: str  # one of KINDS
    description: str
    fn: Callable[[np.ndarray, int], np.ndarray]

    def apply(self, img: np.ndarray, input_size: int) -> np.ndarray:
        return np.clip(self.fn(np.asarray(img, np.float32), input_size), 0.0, 1.0).astype(np.float32)


def _identity(img: np.ndarray, size: int) -> np.ndarray:
    return img


def _gamma(g: float) -> Callable[[np.ndarray, int], np.ndarray]:
    return lambda img, size: np.power(img, g)


def _blur(img: np.ndarray, size: int) -> np.ndarray:
    sigma = BLUR_INPUT_PX * max(img.shape) / max(1, size)
    return cv2.GaussianBlur(img, (0, 0), sigma)


def _jpeg(img: np.ndarray, size: int) -> np.ndarray:
    return jpeg_roundtrip(to_uint8(img), JPEG_QUALITY).astype(np.float32) / 255.0


def _down_up(factor: float, down: int, up: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def fn(img: np.ndarray, size: int) -> np.ndarray:
        return downscale_upscale(img, factor, down, up)

    return fn


def _resample(interp: int) -> Callable[[np.ndarray, int], np.ndarray]:
    return _down_up(RESAMPLE_FACTOR, interp, interp)


def _resolution(factor: float) -> Callable[[np.ndarray, int], np.ndarray]:
    return _down_up(factor, cv2.INTER_AREA, cv2.INTER_LINEAR)


def _noise(img: np.ndarray, size: int) -> np.ndarray:
    rng = np.random.default_rng(NOISE_SEED)
    return img + rng.standard_normal(img.shape, dtype=np.float32) * NOISE_SD


def _rotate(code: int) -> Callable[[np.ndarray, int], np.ndarray]:
    return lambda img, size: cv2.rotate(img, code)


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation(BASELINE, "baseline", "the original, re-saved as an 8-bit PNG", _identity),
    Perturbation("gamma_0.6", "benign", "gamma 0.6 (brighter mid-tones)", _gamma(0.6)),
    Perturbation("gamma_1.6", "benign", "gamma 1.6 (darker mid-tones)", _gamma(1.6)),
    Perturbation("blur", "benign", f"Gaussian blur, sigma {BLUR_INPUT_PX:g} px of the model's input", _blur),
    Perturbation(f"jpeg_q{JPEG_QUALITY}", "benign", f"JPEG at quality {JPEG_QUALITY}", _jpeg),
    Perturbation("resample_nearest", "benign", f"down to {RESAMPLE_FACTOR:g} and back, nearest neighbour",
                 _resample(cv2.INTER_NEAREST)),
    Perturbation("resample_area", "benign", f"down to {RESAMPLE_FACTOR:g} and back, area",
                 _resample(cv2.INTER_AREA)),
    Perturbation("resample_cubic", "benign", f"down to {RESAMPLE_FACTOR:g} and back, bicubic",
                 _resample(cv2.INTER_CUBIC)),
    Perturbation("noise", "degraded", f"Gaussian noise, sd {NOISE_SD:g} of the range", _noise),
    Perturbation("resolution_0.5", "degraded", "downscaled to 0.5 (area) and back (linear)", _resolution(0.5)),
    Perturbation("resolution_0.25", "degraded", "downscaled to 0.25 (area) and back (linear)", _resolution(0.25)),
    Perturbation("invert", "orientation", "inverted grey levels (a MONOCHROME1/2 mix-up)",
                 lambda img, size: 1.0 - img),
    Perturbation("rotate_90", "orientation", "rotated 90 degrees clockwise", _rotate(cv2.ROTATE_90_CLOCKWISE)),
    Perturbation("rotate_180", "orientation", "rotated 180 degrees", _rotate(cv2.ROTATE_180)),
)


def perturbation_names() -> list[str]:
    return [p.name for p in PERTURBATIONS]


def _perturbations(names: Sequence[str] | None) -> list[Perturbation]:
    """The chosen perturbations, always with the baseline first (every figure is against it)."""
    if not names:
        return list(PERTURBATIONS)
    by_name = {p.name: p for p in PERTURBATIONS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown perturbation(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    return [by_name[BASELINE]] + [by_name[n] for n in dict.fromkeys(names) if n != BASELINE]


def encode_png(img: np.ndarray) -> bytes:
    """float [0, 1] (H, W) -> 8-bit PNG bytes: the file a real pipeline would have written
    (lossless for an 8-bit original, so the baseline is the original)."""
    ok, buf = cv2.imencode(".png", to_uint8(img), [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise ValueError("could not encode the perturbed image as PNG")
    return buf.tobytes()


# ---------------------------------------------------------------- which images

def select_images(run_meta: dict, labelled: pd.DataFrame, split: str, limit: int | None) -> pd.DataFrame:
    """The labelled rows to perturb: the run's ``split`` ids ('validation' / 'holdout', in
    any folder holding those ids) or 'all'; then a seeded sample of ``limit`` of them."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")

    rows = rows_in_split(run_meta, labelled, split)
    if rows.empty:
        raise ValueError(f"no labelled images with a file to test ({split})")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if limit is not None and len(rows) > limit:
        pick = np.sort(np.random.default_rng(LIMIT_SEED).choice(len(rows), size=limit, replace=False))
        rows = rows.iloc[pick]
    return rows


# ---------------------------------------------------------------- the report

@dataclass
class RobustnessReport:
    """Per-perturbation summary (``table``) and per-image answers (``per_image``)."""

    table: pd.DataFrame  # perturbation, kind, description, n, n_failed, mae, bias, mae_change, shift, flagged
    per_image: pd.DataFrame  # id, perturbation, boneage, male, predicted, error, flagged, codes, failure
    info: dict = field(default_factory=dict)  # run, data, split, n_images, n_in_training, checks, ...

    def to_dict(self) -> dict:
        """JSON-ready (no NaN: missing numbers are None)."""
        rows = [{k: _clean(v) for k, v in r.items()} for r in self.table.to_dict(orient="records")]
        return {**{k: _clean(v) for k, v in self.info.items()}, "perturbations": rows}


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else round(float(v), 4)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _flag_codes(warnings: Sequence[Any]) -> list[str]:
    """The codes of the warnings that question the image or the answer."""
    out = []
    for w in warnings:
        code = str(getattr(w, "code", None) or (w.get("code") if isinstance(w, dict) else w))
        if code not in CONTEXT_CODES:
            out.append(code)
    return out


def summarize(per_image: pd.DataFrame, perturbations: Sequence[Perturbation]) -> pd.DataFrame:
    """One row per perturbation: MAE, bias, change from the baseline, shift, share flagged."""
    import pandas as pd

    base = per_image[per_image["perturbation"] == BASELINE].set_index("id")["predicted"]
    rows = []
    for p in perturbations:
        d = per_image[per_image["perturbation"] == p.name]
        ok = d[d["predicted"].notna()]
        err = ok["error"].to_numpy(dtype=float)
        moved = (ok.set_index("id")["predicted"] - base).abs().dropna()
        counts = Counter(c for codes in d["codes"] for c in codes.split(";") if c)
        rows.append({
            "perturbation": p.name, "kind": p.kind, "description": p.description,
            "n": len(ok), "n_failed": len(d) - len(ok),
            "mae": float(np.abs(err).mean()) if len(err) else math.nan,
            "bias": float(err.mean()) if len(err) else math.nan,
            "shift": float(moved.mean()) if len(moved) else math.nan,
            "flagged": float(d["flagged"].mean()) if len(d) else math.nan,
            "flag_codes": dict(counts.most_common()),
        })
    table = pd.DataFrame(rows)
    base_mae = table.loc[table["perturbation"] == BASELINE, "mae"]
    table.insert(table.columns.get_loc("bias") + 1, "mae_change",
                 table["mae"] - (float(base_mae.iloc[0]) if len(base_mae) else math.nan))
    return table


def robustness_report(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    perturbations: Sequence[str] | None = None,
    ood: bool = True,
    tta: int = 1,
    progress: ProgressFn | None = None,
) -> RobustnessReport:
    """Perturb each selected radiograph every way and predict it as an upload.

    ``data`` None means the run's own dataset; ``split`` 'validation' / 'holdout' take the
    run's saved ids (default: 'holdout' where the run has one, else 'validation', for its
    own folder; 'all' for another). ``ood`` False skips the embedding check (faster, fewer
    flags); ``tta`` 1 is the model's single answer, more averages the predictor's TTA copies.
    """
    import pandas as pd


    chosen = _perturbations(perturbations)
    run_path = resolve_run(run_dir)
    predictor = Predictor(run_path, ood=ood)
    run = predictor.runs[0]
    own = Path(run.meta["dataset"]["path"])
    data_path = Path(data) if data else own
    same = data_path.resolve() == own.resolve()
    if split is None:
        split = ("holdout" if run.meta.get("splits", {}).get("holdout") else "validation") if same else "all"
    ds = load_dataset(data_path)
    rows = select_images(run.meta, run.task_obj.labelled(ds), split, limit)
    train_ids = {str(i) for i in run.meta.get("splits", {}).get("train", [])}
    size = run.preprocess.size

    records: list[dict] = []
    total = len(rows) * len(chosen)
    done = 0
    report(progress, 0, total, "perturbing and predicting")
    for r in rows.itertuples(index=False):
        ident, age, male = str(r.id), float(r.boneage), bool(r.male)
        try:
            img = read_image(r.path)
        except ImageReadError as exc:
            img, failure = None, str(exc)
        for p in chosen:
            rec = {"id": ident, "perturbation": p.name, "boneage": age, "male": male, "predicted": math.nan,
                   "error": math.nan, "flagged": False, "codes": "", "failure": None}
            if img is None:
                rec["failure"] = failure
            else:
                res = predictor.predict_image(encode_png(p.apply(img, size)), f"{ident}-{p.name}.png",
                                              sex=male, tta=tta, cam=False)
                if res.error:
                    rec["failure"] = res.error
                else:
                    codes = _flag_codes(res.warnings)
                    rec.update(predicted=float(res.bone_age_months), error=float(res.bone_age_months) - age,
                               flagged=bool(codes), codes=";".join(codes))
            records.append(rec)
            done += 1
            report(progress, done, total, p.name)
    per_image = pd.DataFrame.from_records(records)
    table = summarize(per_image, chosen)
    info = {
        "run": run_path.name, "data": str(data_path), "split": split, "n_images": len(rows),
        "limit": limit, "n_in_training": int(rows["id"].astype(str).isin(train_ids).sum()),
        "input_size": size, "tta": int(tta),
        "checks": "the Predictor's own: image checks (h2a.predict.checks) and "
                  + ("the out-of-distribution embedding check" if ood else "no out-of-distribution check (ood off)")
                  + ", plus its warnings about the answer; context-only notes do not count",
    }
    return RobustnessReport(table=table, per_image=per_image, info=info)
