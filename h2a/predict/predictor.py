"""Bone age for image files: prediction, uncertainty, heat map, out-of-distribution checks.

One ``Predictor`` loads the chosen bone-age run(s) once and then answers per image with a
``PredictionResult``; ``predict_files`` (the CLI) and the predict page both go through it.

* **Input** goes through ``h2a.data.imageio`` (PNG, JPEG, TIFF, DICOM). From a DICOM only the
  non-identifying facts ``read_header`` exposes are used: sex, birth/study/acquisition
  dates, PatientAge, modality and body part.
* **Sex** is never defaulted: a sex given by the caller wins, else the DICOM
  ``PatientSex`` (M/F), else that file fails with "sex is needed (...)".
* **Chronological age** (CA): date of birth + exam date given, else an age in months
  given, else the DICOM dates (birth + study or acquisition date), else the DICOM
  ``PatientAge``; a given date of birth or exam date is completed from the DICOM when
  only one of them was typed. Without a CA the result has a bone age but no SDS.
* **Uncertainty**: test-time augmentation (TTA) with the run's own augmentation ranges
  (flip, shift, rotation, zoom) under a fixed seed: copy 0 is the unaugmented image, the
  others are random augmentations. The estimate is the TTA mean (averaged over runs for
  an ensemble); its spread ``sd_tta`` (for an ensemble the law of total variance: mean
  within-run TTA variance + between-run variance) measures how much the answer moves
  under perturbations the model was trained to ignore. That spread is usually much
  narrower than the real error, so the interval uses ``sd = max(sd_tta, RMSE_val)``, the
  run's validation RMSE (mean over ensemble members) as a floor: the interval
  ``[BA - 1.96 sd, BA + 1.96 sd]`` is never narrower than what held-out images showed,
  and widens when the image makes the model unstable. ``interval_source`` says which won.
* **Out-of-distribution** (OOD): the image's embedding (pooled ``forward_features``, ``H2AModel.embed``, of the
  unaugmented copy, standardised per feature) is compared with embeddings of a seeded
  sample of the run's training images: mean distance to the k nearest training images,
  divided by a threshold = 1.25 x the 99th percentile of the same distance for the
  run's validation images (and of the training images' leave-one-out distance). A score
  above 1 adds a warning. The reference is computed once per run and cached in the run
  folder as ``ood.npz`` (keyed by model.pt's size and mtime). Simple image checks add
  warnings too: nearly uniform, noise-like, extreme aspect ratio, colour photograph,
  DICOM of another body part or modality, and a model trained on synthetic data.
* **Heat map**: Grad-CAM of the unaugmented input (mean over ensemble members), mapped
  back from the model's square input to the original image's geometry.

Core module: no streamlit.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from h2a import RESEARCH_NOTE, __version__
from h2a.predict.clinical import (
    REFERENCE_LIMITS,
    REFERENCE_NAME,
    Assessment,
    assess,
    chronological_age_months,
    parse_date,
)
from h2a.inference.loading import LoadedRun, load_run
from h2a.data.transforms import array_input
from h2a.data.imageio import ImageInfo, ImageReadError, read_header, read_image, to_uint8
from h2a.data.preprocess import PreprocessConfig, prepare
from h2a.data.transforms import augment_samples
from h2a.progress import ProgressFn, report
from h2a.engine.runs import MODEL, atomic_write_bytes, best_run, resolve_run

__all__ = [
    "cpu_threads", "NoModelError", "SexNeededError", "PredictionResult", "OODReference", "Predictor", "predict_files",
    "normalize_sex", "resolve_sex", "resolve_age", "header_facts", "image_checks", "cam_to_image",
    "SEX_NEEDED",
]

Source = str | Path | bytes | bytearray | memoryview

Z95 = 1.96
DEFAULT_TTA = 8
TTA_SEED = 0
DISPLAY_SIDE = 1024  # the original is kept at most this large for the page and the PDF
OOD_FILE = "ood.npz"
OOD_VERSION = 1
OOD_K = 5
OOD_MARGIN = 1.25
OOD_TRAIN = 256
OOD_VAL = 128
MAX_TTA = 64

SEX_NEEDED = ("sex is needed (none was given and the file has no DICOM PatientSex M or F): "
              "bone age and its reference are sex-specific, so H2A never guesses it")


class NoModelError(FileNotFoundError):
    """No trained bone-age run to predict with."""


class SexNeededError(ValueError):
    pass


# ---------------------------------------------------------------- small helpers

def normalize_sex(value: Any) -> bool | None:
    """True = male, False = female, None = not given; ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if not text:
        return None
    if text in ("m", "male", "boy", "1"):
        return True
    if text in ("f", "female", "girl", "0"):
        return False
    raise ValueError(f"sex must be male or female, got {value!r}")


def _sex_word(male: bool | None) -> str | None:
    return None if male is None else ("male" if male else "female")


def resolve_sex(given: Any, dicom: dict | None) -> tuple[bool, str, list[str]]:
    """(male, source 'given'|'dicom', warnings); SexNeededError when neither has it."""
    warnings: list[str] = []
    tag = (dicom or {}).get("patient_sex")
    from_tag = {"M": True, "F": False}.get(tag) if tag else None
    male = normalize_sex(given)
    if male is not None:
        if from_tag is not None and from_tag != male:
            warnings.append(f"the sex given ({_sex_word(male)}) differs from the DICOM PatientSex ({tag}); "
                            "the given sex was used")
        return male, "given", warnings
    if from_tag is not None:
        return from_tag, "dicom", warnings
    raise SexNeededError(SEX_NEEDED)


def resolve_age(dob: Any = None, exam_date: Any = None, age_months: float | None = None,
                dicom: dict | None = None) -> tuple[float | None, str | None, list[str]]:
    """(CA in months or None, where it came from, warnings). See the module docstring."""
    warnings: list[str] = []
    d = dicom or {}
    born, seen = parse_date(dob), parse_date(exam_date)
    if born is not None and seen is not None:
        return chronological_age_months(born, seen), "date of birth and exam date given", warnings
    if age_months is not None:
        age = float(age_months)
        if not np.isfinite(age) or age < 0:
            raise ValueError(f"age at exam must be a positive number of months, got {age_months!r}")
        return age, "age at exam given", warnings
    tag_born = parse_date(d.get("birth_date"))
    tag_seen = parse_date(d.get("study_date") or d.get("acquisition_date"))
    b, s = born or tag_born, seen or tag_seen
    if b is not None and s is not None:
        source = "DICOM dates" if (born is None and seen is None) else "dates given, completed from the DICOM"
        try:
            return chronological_age_months(b, s), source, warnings
        except ValueError as exc:
            warnings.append(f"no chronological age: {exc}")
            return None, None, warnings
    if d.get("age_months") is not None:
        return float(d["age_months"]), f"DICOM PatientAge ({d.get('patient_age')})", warnings
    if born is not None or seen is not None:
        warnings.append("only one of date of birth / exam date is known: no chronological age, so no SDS")
    return None, None, warnings


def header_facts(source: Source, name: str | None = None) -> dict:
    """What the form can prefill from a file: sex ('male'/'female'/None), dates, age.

    Non-identifying facts only (``read_header``'s ``dicom`` dict); {} for non-DICOM files
    and for files whose header cannot be read (the prediction reports that error).
    """
    try:
        info = read_header(source, name)
    except ImageReadError:
        return {}
    d = info.dicom
    if not d:
        return {}
    return {
        "sex": _sex_word({"M": True, "F": False}.get(d.get("patient_sex") or "")),
        "patient_sex": d.get("patient_sex"),
        "dob": d.get("birth_date"),
        "exam_date": d.get("study_date") or d.get("acquisition_date"),
        "age_months": d.get("age_months"),
        "patient_age": d.get("patient_age"),
    }


def _small(img: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(img.shape)
    if scale >= 1:
        return img
    return cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


def _colourfulness(source: Source) -> float | None:
    """Mean (max - min) over RGB channels in [0, 1] on a small copy; None if not colour."""
    from PIL import Image

    try:
        data = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else open(source, "rb")
        with data, Image.open(data) as im:
            im.draft("RGB", (256, 256))
            if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                return None
            im = im.convert("RGB")
            im.thumbnail((256, 256))
            a = np.asarray(im, dtype=np.float32) / 255.0
    except Exception:  # noqa: BLE001 - a failed colour check is no finding
        return None
    return float((a.max(axis=2) - a.min(axis=2)).mean())


def image_checks(img: np.ndarray, info: ImageInfo | None = None, colourfulness: float | None = None) -> list[str]:
    """Cheap signs that an image is not a usable hand radiograph (each a warning)."""
    out: list[str] = []
    h, w = img.shape
    small = _small(img, 256).astype(np.float32)
    lo, hi = np.percentile(small, [1, 99])
    if float(small.std()) < 0.02 or hi - lo < 0.05:
        out.append("the image is nearly uniform (no visible structure): this is not a usable radiograph")
    else:
        # neighbour correlation on a strided (not resampled) copy: interpolation would
        # correlate even pure noise; a radiograph's neighbouring pixels correlate > 0.9
        step = max(1, max(h, w) // 512)
        a = img[::step, ::step].astype(np.float32)
        a = a - a.mean()
        den = float((a * a).mean())
        corr = min(float((a[:, 1:] * a[:, :-1]).mean()), float((a[1:, :] * a[:-1, :]).mean())) / max(den, 1e-12)
        if corr < 0.3:
            out.append(f"the image looks like noise (neighbouring pixels are uncorrelated, r = {corr:.2f}): "
                       "this does not look like a radiograph")
    ratio = max(h, w) / max(1, min(h, w))
    if ratio > 2.5:
        out.append(f"extreme aspect ratio ({w} x {h} px, {ratio:.1f}:1): not a typical hand radiograph")
    if colourfulness is not None and colourfulness > 0.08:
        out.append("the image is in colour (a photograph or a screenshot?), not a grayscale radiograph")
    d = info.dicom if info is not None else None
    if d:
        part = (d.get("body_part") or "").upper()
        if part and not any(k in part for k in ("HAND", "WRIST", "EXTREMITY", "UPR EXTREMITY", "FINGER")):
            out.append(f"the DICOM says BodyPartExamined = {part}, not a hand")
        mod = (d.get("modality") or "").upper()
        if mod in ("CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "ES", "OP", "SM", "XC"):
            out.append(f"the DICOM modality is {mod}, not a plain radiograph")
    return out


def cam_to_image(cam: np.ndarray, shape: tuple[int, int], cfg: PreprocessConfig) -> np.ndarray:
    """A CAM at the model's square input -> the original image geometry ``shape`` (H, W).

    Undoes ``prepare``: 'pad' crops the letterbox, 'squash' stretches back, 'crop' puts
    the map on the centred square (zero elsewhere).
    """
    h, w = shape
    s = cam.shape[0]
    cam = np.asarray(cam, np.float32)
    if cfg.resize == "pad":
        scale = s / max(h, w)
        nh, nw = min(s, max(1, round(h * scale))), min(s, max(1, round(w * scale)))
        y0, x0 = (s - nh) // 2, (s - nw) // 2
        return cv2.resize(cam[y0:y0 + nh, x0:x0 + nw], (w, h), interpolation=cv2.INTER_LINEAR)
    if cfg.resize == "squash":
        return cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    side = min(h, w)
    out = np.zeros((h, w), np.float32)
    y0, x0 = (h - side) // 2, (w - side) // 2
    out[y0:y0 + side, x0:x0 + side] = cv2.resize(cam, (side, side), interpolation=cv2.INTER_LINEAR)
    return out


@contextmanager
def cpu_threads(device: torch.device, threads: int | None):
    """Intra-op threads for the duration of a prediction on the CPU.

    ``threads`` None = adaptive: one thread when the machine is already busy (1-minute
    load average >= its CPU count), else torch's default. On a loaded 2-core machine two
    OpenMP threads wait at every operator's barrier for whichever one was descheduled:
    measured here, EfficientNet-Lite0 at 256 px took 2.4 s per image with 2 threads and
    0.17 s with 1. The previous setting is restored afterwards.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    want = threads
    if want is None:
        try:
            busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
        except OSError:
            busy = False
        want = 1 if busy else before
    if want != before:
        torch.set_num_threads(max(1, int(want)))
    try:
        yield
    finally:
        if want != before:
            torch.set_num_threads(before)


# ---------------------------------------------------------------- out-of-distribution

@dataclass
class OODReference:
    """Standardised training embeddings and the distance threshold for one run."""

    train: np.ndarray  # (n, D) float32, standardised
    mu: np.ndarray  # (D,)
    sd: np.ndarray  # (D,)
    threshold: float
    val_distances: np.ndarray
    k: int = OOD_K

    def distance(self, emb: np.ndarray) -> float:
        z = (np.asarray(emb, np.float32).reshape(-1) - self.mu) / self.sd
        d = np.sqrt(((self.train - z) ** 2).sum(axis=1)) / np.sqrt(z.size)
        k = min(self.k, len(d))
        return float(np.sort(d)[:k].mean())

    def score(self, emb: np.ndarray) -> float:
        """Distance / threshold: above 1 means unlike the training images."""
        return self.distance(emb) / self.threshold


def _model_key(run_dir: Path) -> str:
    st = (run_dir / MODEL).stat()
    return f"{OOD_VERSION}:{st.st_size}:{st.st_mtime_ns}"


def _reference_images(run: LoadedRun, n_train: int, n_val: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded samples of the run's training and validation images, preprocessed as for the model.

    From the tensor cache when it exists; else only the sampled files are decoded.
    """
    from h2a.data.cache import open_cache
    from h2a.data.datasets import load_dataset

    ds = load_dataset(run.meta["dataset"]["path"])
    rng = np.random.default_rng(seed)
    splits = run.meta.get("splits", {})

    def sample(ids: list[str], n: int) -> list[str]:
        ids = [str(i) for i in ids]
        return [ids[i] for i in sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False))] if ids else []

    want_train, want_val = sample(splits.get("train", []), n_train), sample(splits.get("validation", []), n_val)
    cache = open_cache(ds, run.preprocess)
    paths = ds.meta.set_index(ds.meta["id"].astype(str))["path"]
    paths = paths[~paths.index.duplicated()]

    def load(ids: list[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        if cache is not None:
            try:
                rows = cache.rows(ids)
                ok = cache.ok[rows]
                return cache.take(rows[ok])
            except (KeyError, ValueError):
                pass
        for i in ids:
            p = paths.get(i)
            if not p:
                continue
            try:
                out.append(prepare(read_image(p), run.preprocess))
            except ImageReadError:
                continue
        s = run.preprocess.size
        return np.stack(out) if out else np.zeros((0, s, s), np.uint8)

    return load(want_train), load(want_val)


@torch.no_grad()
def _embed(run: LoadedRun, images: np.ndarray, batch: int = 64) -> np.ndarray:
    feats = []
    for i in range(0, len(images), batch):
        x = array_input(images[i:i + batch], run.norm, run.device)
        feats.append(run.model.embed(x).float().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, run.model.num_features), np.float32)


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows of a (n, D) and b (m, D) / sqrt(D), without an (n, m, D) array."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    sq = (a64 * a64).sum(1)[:, None] + (b64 * b64).sum(1)[None, :] - 2.0 * a64 @ b64.T
    return np.sqrt(np.maximum(sq, 0.0)) / np.sqrt(a.shape[1])


def _knn_mean(dist: np.ndarray, k: int) -> np.ndarray:
    k = min(k, dist.shape[1])
    return np.sort(dist, axis=1)[:, :k].mean(axis=1)


def build_ood_reference(run: LoadedRun, n_train: int = OOD_TRAIN, n_val: int = OOD_VAL) -> OODReference | None:
    """Embed samples of the run's own images; None when they are not available."""
    train_u8, val_u8 = _reference_images(run, n_train, n_val)
    if len(train_u8) < OOD_K + 2:
        return None
    train = _embed(run, train_u8)
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    sd = np.maximum(sd, 0.1 * float(np.median(sd)) + 1e-6).astype(np.float32)
    z = ((train - mu) / sd).astype(np.float32)
    pair = _dist(z, z)
    np.fill_diagonal(pair, np.inf)
    loo = _knn_mean(pair, OOD_K)
    ref_q = float(np.quantile(loo, 0.99))
    val_d = np.zeros(0, np.float32)
    if len(val_u8):
        zv = (_embed(run, val_u8) - mu) / sd
        val_d = _knn_mean(_dist(zv, z), OOD_K)
        ref_q = max(ref_q, float(np.quantile(val_d, 0.99)))
    threshold = max(OOD_MARGIN * ref_q, 1e-6)  # identical training embeddings must not divide by zero
    return OODReference(z, mu.astype(np.float32), sd, threshold, val_d.astype(np.float32))


def load_ood_reference(run: LoadedRun, *, build: bool = True) -> OODReference | None:
    """The run's OOD reference from ``ood.npz``, computed and cached there when missing or stale."""
    path = run.path / OOD_FILE
    key = _model_key(run.path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) == key:
                return OODReference(f["train"], f["mu"], f["sd"], float(f["threshold"]), f["val_distances"],
                                    int(f["k"]))
    except (OSError, KeyError, ValueError):
        pass
    if not build:
        return None
    try:
        ref = build_ood_reference(run)
    except (OSError, ValueError, KeyError):  # dataset moved or unreadable: no embedding check
        return None
    if ref is None:
        return None
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), train=ref.train, mu=ref.mu, sd=ref.sd, threshold=np.float64(ref.threshold),
             val_distances=ref.val_distances, k=np.int64(ref.k))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # a read-only run folder: keep it in memory only
    return ref


# ---------------------------------------------------------------- results

@dataclass
class PredictionResult:
    """One file's answer; ``error`` set (and the numbers None) when it failed."""

    file: str
    error: str | None = None
    bone_age_months: float | None = None
    interval_months: tuple[float, float] | None = None
    interval_source: str | None = None  # 'tta' or 'validation rmse'
    tta: int = 0
    tta_sd_months: float | None = None
    rmse_months: float | None = None
    members: list[dict] = field(default_factory=list)  # per run: run, bone_age_months, tta_sd_months
    sex: str | None = None  # 'male' / 'female'
    sex_source: str | None = None  # 'given' / 'dicom'
    chronological_age_months: float | None = None
    chronological_age_source: str | None = None
    assessment: Assessment | None = None
    warnings: list[str] = field(default_factory=list)
    ood_score: float | None = None
    model_runs: list[str] = field(default_factory=list)
    model_info: list[dict] = field(default_factory=list)
    image: np.ndarray | None = None  # uint8 (H, W), the original at most DISPLAY_SIDE px
    cam: np.ndarray | None = None  # float32 (H, W) in [0, 1], same geometry as ``image``
    model_input: np.ndarray | None = None  # uint8 (S, S): what the (first) model saw
    image_sha256: str | None = None
    original_size: tuple[int, int] | None = None  # (width, height)
    dicom: dict | None = None  # non-identifying header facts only
    timings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def model_run(self) -> str:
        return " + ".join(self.model_runs)

    def to_dict(self) -> dict:
        """The per-file record of the CLI's --json and the batch CSV."""
        if self.error:
            return {"file": self.file, "error": self.error, "model_run": self.model_run or None}
        a = self.assessment
        lo, hi = self.interval_months
        return {
            "file": self.file,
            "bone_age_months": round(self.bone_age_months, 2),
            "bone_age_years": round(self.bone_age_months / 12, 2),
            "interval_months": [round(lo, 2), round(hi, 2)],
            "interval_source": self.interval_source,
            "tta": self.tta,
            "tta_sd_months": round(self.tta_sd_months, 3) if self.tta_sd_months is not None else None,
            "chronological_age_months": round(self.chronological_age_months, 2)
            if self.chronological_age_months is not None else None,
            "chronological_age_source": self.chronological_age_source,
            "ba_minus_ca_months": round(a.ba_minus_ca_months, 2) if a else None,
            "ba_minus_ca_years": round(a.ba_minus_ca_years, 2) if a else None,
            "sds": round(a.sds, 3) if a else None,
            "classification": a.classification if a else None,
            "reference_mean_months": round(a.reference_mean_months, 2) if a else None,
            "reference_sd_months": round(a.reference_sd_months, 3) if a else None,
            "sex": self.sex,
            "sex_source": self.sex_source,
            "warnings": list(self.warnings),
            "notes": list(a.notes) if a else [RESEARCH_NOTE],
            "ood_score": round(self.ood_score, 3) if self.ood_score is not None else None,
            "reference": f"{REFERENCE_NAME}. {REFERENCE_LIMITS}" if a else None,
            "model_run": self.model_run,
            "members": self.members,
        }


# ---------------------------------------------------------------- predictor

def resolve_runs(model: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """Run folders for ``model``: a name/path, a list of them (ensemble), or None = best run."""
    if model is None or (isinstance(model, (list, tuple)) and not model):
        best = best_run("boneage")
        if best is None:
            raise NoModelError(
                "no trained bone-age model found: train one first (python -m h2a train --data DIR --out "
                "models/NAME, or the training page), or pass --model RUN")
        return [best.path]
    items = [model] if isinstance(model, (str, Path)) else list(model)
    out: list[Path] = []
    for item in items:
        for part in ([p for p in str(item).split(",") if p.strip()] if isinstance(item, str) else [item]):
            p = resolve_run(str(part).strip() if isinstance(part, str) else part)
            if p not in out:
                out.append(p)
    return out


def _model_summary(run: LoadedRun) -> dict:
    meta, m = run.meta, run.meta.get("metrics", {})
    data = meta.get("dataset", {})
    return {
        "run": run.path.name, "arch": meta.get("arch"), "image_size": run.preprocess.size,
        "val_mae": m.get("mae"), "val_rmse": m.get("rmse"), "n_val": m.get("n"),
        "dataset": data.get("name"), "synthetic": bool(data.get("synthetic")),
        "created": meta.get("created"), "h2a_version": (meta.get("versions") or {}).get("h2a", __version__),
        "use_sex": run.model.use_sex,
    }


class Predictor:
    """Loads bone-age run(s) once; ``predict_image`` answers for one file.

    Several runs form an ensemble (mean of their TTA means). Safe to share between
    Streamlit sessions (``st.cache_resource``): predictions never change the models and
    run one at a time under a lock.
    """

    def __init__(self, model: str | Path | Sequence[str | Path] | None = None, *,
                 device: torch.device | None = None, ood: bool = True, threads: int | None = None) -> None:
        self.paths = resolve_runs(model)
        self.runs: list[LoadedRun] = []
        for p in self.paths:
            run = load_run(p, device)
            if run.task != "boneage":
                raise ValueError(f"{p.name} is a {run.task} model, not a bone-age model")
            self.runs.append(run)
        self.ood = ood
        self.threads = threads  # CPU intra-op threads per prediction; None = adaptive (see cpu_threads)
        self._ood_refs: dict[Path, OODReference | None] = {}
        # Grad-CAM hooks the shared model for one forward pass: concurrent page sessions
        # must not interleave there, so predictions on one Predictor run one at a time.
        self._lock = threading.Lock()
        self.summaries = [_model_summary(r) for r in self.runs]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]

    def ood_reference(self, run: LoadedRun) -> OODReference | None:
        if not self.ood:
            return None
        if run.path not in self._ood_refs:  # computed under the caller's lock or before serving
            self._ood_refs[run.path] = load_ood_reference(run)
        return self._ood_refs[run.path]

    def warmup(self) -> None:
        """One dummy TTA batch and CAM per run: the first real image is then as fast as the rest
        (the first convolution on a CPU pays for kernel selection and thread start-up)."""
        with self._lock, cpu_threads(self.runs[0].device, self.threads):
            self._warmup()

    def _warmup(self) -> None:
        for run in self.runs:
            s = run.preprocess.size
            blank = np.zeros((s, s), np.uint8)
            self.forward(run, self.tta_inputs(run, blank, DEFAULT_TTA), True)
            self.cam(run, blank, True)

    def prepare_ood(self) -> None:
        """Build (or load) every run's OOD reference now (the page shows a spinner)."""
        with self._lock, cpu_threads(self.runs[0].device, self.threads):
            for run in self.runs:
                self.ood_reference(run)

    # -- stages (also timed by bench/bench_predict.py) ------------------------
    @staticmethod
    def tta_inputs(run: LoadedRun, u8: np.ndarray, n: int) -> np.ndarray:
        """(n, S, S) uint8: the image and n-1 seeded augmentations with the run's ranges."""
        copies = [u8] + (augment_samples(u8, run.preprocess, n=n - 1, seed=TTA_SEED) if n > 1 else [])
        return np.stack(copies)

    @staticmethod
    @torch.no_grad()
    def forward(run: LoadedRun, batch_u8: np.ndarray, male: bool) -> tuple[np.ndarray, np.ndarray]:
        """Months for each copy and the embedding of copy 0."""
        x = array_input(batch_u8, run.norm, run.device)
        fmap = run.model.forward_features(x)
        sex = torch.full((len(x),), float(male), device=run.device) if run.model.use_sex else None
        raw = run.model.forward_head(fmap, sex).float().cpu().numpy()
        emb = run.model.forward_head(fmap[:1], pre_logits=True)
        return np.asarray(run.to_output(raw), np.float64), emb[0].float().cpu().numpy()

    @staticmethod
    def cam(run: LoadedRun, u8: np.ndarray, male: bool) -> np.ndarray:
        from h2a.inference.cam import run_cam

        return run_cam(run, u8, male)

    # -- one image -------------------------------------------------------------
    def predict_image(self, source: Source, name: str | None = None, *, sex: Any = None, dob: Any = None,
                      exam_date: Any = None, age_months: float | None = None, tta: int = DEFAULT_TTA,
                      cam: bool = True) -> PredictionResult:
        """Predict one file; never raises for a problem with the file or its inputs."""
        shown = name or (str(source) if isinstance(source, (str, Path)) else "upload")
        res = PredictionResult(file=shown, model_runs=self.names, model_info=self.summaries)
        try:
            with self._lock, cpu_threads(self.runs[0].device, self.threads):
                self._predict(res, source, shown, sex, dob, exam_date, age_months, tta, cam)
        except ImageReadError as exc:
            res.error = str(exc)  # "name: problem", as everywhere else in H2A
        except (SexNeededError, ValueError) as exc:
            res.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a batch
            res.error = f"unexpected {type(exc).__name__}: {exc}"
        if res.error:  # no half-filled numbers next to an error
            keep = PredictionResult(file=shown, error=res.error, model_runs=self.names, model_info=self.summaries,
                                    sex=res.sex, sex_source=res.sex_source)
            return keep
        return res

    def _predict(self, res: PredictionResult, source: Source, name: str, sex: Any, dob: Any, exam_date: Any,
                 age_months: float | None, tta: int, want_cam: bool) -> None:
        t = res.timings
        t0 = time.perf_counter()
        info = read_header(source, name)
        res.dicom = info.dicom
        male, res.sex_source, w = resolve_sex(sex, info.dicom)
        res.sex = _sex_word(male)
        res.warnings += w
        ca, ca_source, w = resolve_age(dob, exam_date, age_months, info.dicom)
        res.warnings += w
        img = read_image(source, name)
        t["decode"] = time.perf_counter() - t0
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
        res.image_sha256 = hashlib.sha256(data if data is not None else Path(source).read_bytes()).hexdigest()
        res.original_size = (img.shape[1], img.shape[0])
        colour = _colourfulness(source) if (info.channels >= 3 and not info.dicom) else None
        res.warnings += image_checks(img, info, colour)

        t1 = time.perf_counter()
        prepared: dict[str, np.ndarray] = {}
        for run in self.runs:
            key = run.preprocess.cache_key()
            if key not in prepared:
                prepared[key] = prepare(img, run.preprocess)
        res.model_input = prepared[self.runs[0].preprocess.cache_key()]
        res.image = to_uint8(_small(img, DISPLAY_SIDE))
        t["preprocess"] = time.perf_counter() - t1

        n = int(min(MAX_TTA, max(1, int(tta))))
        res.tta = n
        t2 = time.perf_counter()
        means, variances, rmses, ood_scores = [], [], [], []
        for run in self.runs:
            u8 = prepared[run.preprocess.cache_key()]
            months, emb = self.forward(run, self.tta_inputs(run, u8, n), male)
            means.append(float(months.mean()))
            variances.append(float(months.var(ddof=1)) if n > 1 else 0.0)
            rmse = run.meta.get("metrics", {}).get("rmse")
            if rmse is not None:
                rmses.append(float(rmse))
            res.members.append({"run": run.path.name, "bone_age_months": round(means[-1], 2),
                                "tta_sd_months": round(float(np.sqrt(variances[-1])), 3)})
            ref = self.ood_reference(run)
            if ref is not None:
                ood_scores.append(ref.score(emb))
        t["model_tta"] = time.perf_counter() - t2

        ba = float(np.mean(means))
        sd_tta = float(np.sqrt(np.mean(variances) + (np.var(means) if len(means) > 1 else 0.0)))
        rmse = float(np.mean(rmses)) if rmses else None
        sd = max(sd_tta, rmse or 0.0)
        res.tta_sd_months, res.rmse_months = sd_tta, rmse
        res.interval_source = "tta" if rmse is None or sd_tta >= rmse else "validation rmse"
        if ba < 0:
            res.warnings.append(f"the model predicted a negative bone age ({ba:.1f} months); shown as 0")
            ba = 0.0
        res.bone_age_months = ba
        res.interval_months = (max(0.0, ba - Z95 * sd), ba + Z95 * sd)
        if ba > 228:
            res.warnings.append(f"bone age {ba / 12:.1f} y is beyond the range of the RSNA training data (0-19 y)")

        if ood_scores:
            res.ood_score = float(max(ood_scores))
            if res.ood_score > 1.0:
                res.warnings.insert(0, (
                    f"this image looks unlike the model's training images (embedding distance {res.ood_score:.1f}x "
                    "the in-distribution threshold): the bone age below may be meaningless"))
        elif self.ood:
            res.warnings.append("the model's training images were not found, so H2A could not check whether "
                                "this image resembles them")
        synthetic = [s["run"] for s in self.summaries if s["synthetic"]]
        if synthetic:
            res.warnings.append(f"model {', '.join(synthetic)} was trained on SYNTHETIC demo images: its "
                                "estimate for a real radiograph is not meaningful")

        if want_cam:
            t3 = time.perf_counter()
            maps = [cam_to_image(self.cam(run, prepared[run.preprocess.cache_key()], male), res.image.shape,
                                 run.preprocess) for run in self.runs]
            c = np.mean(maps, axis=0)
            peak = float(c.max())
            res.cam = (c / peak if peak > 0 else c).astype(np.float32)
            t["cam"] = time.perf_counter() - t3

        if ca is not None:
            res.chronological_age_months, res.chronological_age_source = ca, ca_source
            res.assessment = assess(ba, ca, male)
            for note in res.assessment.notes:
                if "row is used" in note or "near-mature" in note:
                    res.warnings.append(note)
        t["total"] = time.perf_counter() - t0


# ---------------------------------------------------------------- many files (the CLI)

def _check_inputs(sex: Any, dob: Any, exam_date: Any, age_months: float | None, tta: int) -> None:
    normalize_sex(sex)
    born, seen = parse_date(dob), parse_date(exam_date)
    if born is not None and seen is not None:
        chronological_age_months(born, seen)
    if born is not None and born > date.today():
        raise ValueError(f"the date of birth {born.isoformat()} is in the future")
    if age_months is not None and (not np.isfinite(float(age_months)) or float(age_months) < 0):
        raise ValueError(f"age at exam must be a positive number of months, got {age_months!r}")
    if int(tta) < 1:
        raise ValueError(f"--tta must be at least 1 (1 = no augmentation), got {tta}")


def _report_path(report_dir: Path, file: str, used: set[str]) -> Path:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(file).stem) or "image"
    name, k = stem, 2
    while name in used:
        name, k = f"{stem}-{k}", k + 1
    used.add(name)
    return report_dir / f"{name}.pdf"


def predict_files(model: str | Path | Sequence[str | Path] | None, files: Sequence[str | Path], *,
                  sex: Any = None, dob: Any = None, exam_date: Any = None, age_months: float | None = None,
                  tta: int = DEFAULT_TTA, cam: bool = False, report_dir: str | Path | None = None,
                  progress: ProgressFn | None = None) -> list[dict]:
    """Bone age for each file, as JSON-ready dicts (one per file, failures included).

    ``model`` is a run name/path, a list of them (an ensemble) or None for the best
    validated bone-age run. Raises NoModelError / FileNotFoundError / ValueError only for
    problems with the call itself (no model, a bad date); a bad file gets an ``error``.
    """
    _check_inputs(sex, dob, exam_date, age_months, tta)
    predictor = Predictor(model)
    out_dir = Path(report_dir) if report_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results: list[dict] = []
    for i, f in enumerate(files):
        res = predictor.predict_image(str(f), name=str(f), sex=sex, dob=dob, exam_date=exam_date,
                                      age_months=age_months, tta=tta, cam=cam or out_dir is not None)
        d = res.to_dict()
        if out_dir is not None and res.ok:
            from h2a.predict.report import write_report

            try:
                d["report"] = str(write_report(res, _report_path(out_dir, str(f), used)))
            except (OSError, ValueError, RuntimeError) as exc:
                d["warnings"].append(f"the PDF report could not be written: {exc}")
        results.append(d)
        report(progress, i + 1, len(files), "predicting")
    return results
