"""Bone age for image files: the ``Predictor`` (models loaded once) and its ``PredictionResult``.

One ``Predictor`` loads the chosen bone-age run(s) once and then answers per image with a
``PredictionResult``; ``h2a.predict.batch.predict_files`` (the CLI) and the predict page
both go through it. The pieces it combines live next to it: ``inputs`` (sex, age, DICOM
facts), ``checks`` (image checks), ``ood`` (the embedding check), ``clinical`` (SDS),
``alerts`` (the coded warnings every stage adds).

* **Input** goes through ``h2a.data.imageio`` (PNG, JPEG, TIFF, DICOM).
* **Estimate**: test-time augmentation (TTA) with the run's own augmentation ranges
  (flip, shift, rotation, zoom) under a fixed seed: copy 0 is the unaugmented image, the
  others are random augmentations. The estimate is the TTA mean (averaged over runs for
  an ensemble); its spread ``sd_tta`` (for an ensemble the law of total variance) is
  reported as how much the answer moves under perturbations the model ignores.
* **Interval**: the run's conformal calibration (``h2a.inference.conformal``: split-conformal
  on the validation residuals, one width per predicted-age band and sex, fitted with the
  procedure predict uses by default) when it has one: ``interval_source`` 'conformal',
  ``interval_method`` naming method, level and group, ``measured_coverage`` how often it
  covered the truth and where that was measured. For an ensemble the members' half-widths
  are averaged (each member's own group), which is conservative: the ensemble mean errs
  less than its members. A run without a calibration (trained before it existed) keeps the
  old rule, ``sd = max(sd_tta, RMSE_val)`` and ``[BA - 1.96 sd, BA + 1.96 sd]``, with
  unknown coverage, and ``interval_method`` says so.
* **Heat map**: Grad-CAM of the unaugmented input (mean over ensemble members, through
  ``h2a.inference.cam.run_cam``), mapped back from the model's square input to the
  original image's geometry.

Core module: no streamlit.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from h2a import RESEARCH_NOTE, __version__
from h2a.data.imageio import ImageReadError, read_header, read_image, to_uint8
from h2a.data.preprocess import PreprocessConfig, prepare
from h2a.data.orientation import hand_bbox
from h2a.data.transforms import array_input
from h2a.device import resolve_device
from h2a.run import best_run, resolve_run, weights_file
from h2a.inference.arrays import tta_views, view_outputs
from h2a.inference.calibration import DEFAULT_TTA
from h2a.inference.conformal import Procedure
from h2a.inference.loading import LoadedRun, load_run
from h2a.inference.site_profile import SiteError, list_sites, read_site
from h2a.predict.alerts import Alert, Code, flagged
from h2a.predict.checks import checked_image, colourfulness, downscale
from h2a.predict.clinical import REFERENCE_LIMITS, REFERENCE_NAME, Assessment, assess
from h2a.predict.inputs import (
    SexNeededError,
    Source,
    resolve_age,
    resolve_sex,
    sex_word,
)
from h2a.predict.ood import OOD_UNCHECKED, OODReference, load_ood_reference, ood_alert
from h2a.inference.cam import run_cam
from h2a.inference.onnx_export import OnnxRunner, export_model

__all__ = [
    "DEFAULT_TTA",
    "DISPLAY_SIDE",
    "MAX_TTA",
    "Z95",
    "NoModelError",
    "PredictionResult",
    "Predictor",
    "cam_to_image",
    "cpu_threads",
    "model_summary",
    "resolve_runs",
]

Z95 = 1.96  # the old rule's z (runs without a conformal calibration)
LEGACY_INTERVAL = ("legacy rule: estimate +/- 1.96 x max(TTA SD, validation RMSE); its coverage was never "
                   "measured (this run has no conformal calibration: run h2a calibrate)")
DISPLAY_SIDE = 1024  # the original is kept at most this large for the page and the PDF
MAX_TTA = 64
BACKENDS = ("torch", "onnx")  # what runs the model: PyTorch, or its ONNX export through onnxruntime
AUTO_SITE = "auto"  # Predictor(site=...): the site a run declares for large uploads, if any
RSNA_MAX_MONTHS = 228  # the RSNA training data's bone ages end at 19 y


class NoModelError(FileNotFoundError):
    """No trained bone-age run to predict with."""


def cam_to_image(cam: np.ndarray, shape: tuple[int, int], cfg: PreprocessConfig,
                 image: np.ndarray | None = None) -> np.ndarray:
    """A CAM at the model's square input -> the original image geometry ``shape`` (H, W).

    Undoes ``prepare``: 'pad' crops the letterbox, 'squash' stretches back, 'crop' puts
    the map on the centred square (zero elsewhere); with ``hand_crop`` the map goes on the
    hand's box found again in ``image`` (the displayed image, of ``shape``).
    """
    h, w = shape
    s = cam.shape[0]
    cam = np.asarray(cam, np.float32)
    if cfg.hand_crop and image is not None:
        box = hand_bbox(image)
        if box is not None:  # the map covers the hand's box, as prepare cut it
            x0, y0, x1, y1 = box
            out = np.zeros((h, w), np.float32)
            out[y0:y1, x0:x1] = cam_to_image(cam, (y1 - y0, x1 - x0), replace(cfg, hand_crop=False))
            return out
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


# ---------------------------------------------------------------- results

@dataclass
class PredictionResult:
    """One file's answer; ``error`` set (and the numbers None) when it failed."""

    file: str
    error: str | None = None
    bone_age_months: float | None = None
    interval_months: tuple[float, float] | None = None
    interval_source: str | None = None  # 'conformal', or the old rule's 'tta' / 'validation rmse'
    interval_method: str | None = None  # method, level and group in words
    interval_level: float | None = None
    interval_procedure_mismatch: bool = False  # predicted with another TTA than the calibration's
    measured_coverage: dict | None = None  # coverage, n, source, text (see calibration.measured_coverage)
    tta: int = 0
    tta_sd_months: float | None = None
    rmse_months: float | None = None
    members: list[dict] = field(default_factory=list)  # per run: run, bone_age_months, tta_sd_months
    sex: str | None = None  # 'male' / 'female'
    sex_source: str | None = None  # 'given' / 'dicom'
    chronological_age_months: float | None = None
    chronological_age_source: str | None = None
    assessment: Assessment | None = None
    warnings: list[Alert] = field(default_factory=list)  # coded: see h2a.predict.alerts
    ood_score: float | None = None
    model_runs: list[str] = field(default_factory=list)
    model_info: list[dict] = field(default_factory=list)
    image: np.ndarray | None = None  # uint8 (H, W), the original at most DISPLAY_SIDE px
    cam: np.ndarray | None = None  # float32 (H, W) in [0, 1], same geometry as ``image``
    model_input: np.ndarray | None = None  # uint8 (S, S): what the (first) model saw
    image_sha256: str | None = None
    original_size: tuple[int, int] | None = None  # (width, height)
    dicom: dict | None = None  # non-identifying header facts only
    site: str | None = None  # the site profile applied (h2a adapt), None = the run as trained
    site_reason: str | None = None  # why that site (or none) was applied
    site_parts: list[str] = field(default_factory=list)
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
            "interval_method": self.interval_method,
            "interval_level": self.interval_level,
            "interval_procedure_mismatch": self.interval_procedure_mismatch,
            "measured_coverage": self.measured_coverage,
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
            "flagged": flagged(self.warnings),  # the number stays; a flagging alert marks it
            "warnings": [w.to_dict() for w in self.warnings],
            "notes": list(a.notes) if a else [RESEARCH_NOTE],
            "ood_score": round(self.ood_score, 3) if self.ood_score is not None else None,
            "reference": f"{REFERENCE_NAME}. {REFERENCE_LIMITS}" if a else None,
            "model_run": self.model_run,
            "members": self.members,
            "site": self.site,
            "site_reason": self.site_reason,
            "site_parts": self.site_parts,
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


def model_summary(run: LoadedRun) -> dict:
    """What the page and the PDF print about a run (name, architecture, validation error, data)."""
    meta, m = run.meta, run.meta.get("metrics", {})
    data = meta.get("dataset", {})
    return {
        "run": run.path.name, "arch": meta.get("arch"), "image_size": run.preprocess.size,
        "val_mae": m.get("mae"), "val_rmse": m.get("rmse"), "n_val": m.get("n"),
        "dataset": data.get("name"), "synthetic": bool(data.get("synthetic")),
        "created": meta.get("created"), "h2a_version": (meta.get("versions") or {}).get("h2a", __version__),
        "use_sex": run.model.use_sex,
        "calibrated": run.conformal is not None,
    }


@dataclass
class _Estimate:
    """Per-run TTA outcomes, before they are combined into one estimate."""

    means: list[float] = field(default_factory=list)
    variances: list[float] = field(default_factory=list)
    rmses: list[float] = field(default_factory=list)
    ood_scores: list[float] = field(default_factory=list)
    half_widths: list[float] = field(default_factory=list)  # conformal, one per calibrated run
    methods: list[str] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    mismatch: bool = False


class Predictor:
    """Loads bone-age run(s) once; ``predict_image`` answers for one file.

    Several runs form an ensemble (mean of their TTA means). Safe to share between
    Streamlit sessions (``st.cache_resource``): predictions never change the models and
    run one at a time under a lock.
    """

    def __init__(self, model: str | Path | Sequence[str | Path] | None = None, *,
                 device: torch.device | None = None, ood: bool = True, threads: int | None = None,
                 site: str | None = AUTO_SITE, backend: str = "torch") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
        self.backend = backend
        self._onnx: dict[Path, Any] = {}  # graph path -> OnnxRunner
        self.paths = resolve_runs(model)
        self.runs: list[LoadedRun] = []
        device = device or resolve_device()  # H2A_DEVICE, else the GPU when there is one (page, CLI, batch)
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
        self.summaries = [model_summary(r) for r in self.runs]
        # site: AUTO_SITE (a site that declares itself the default for large uploads, e.g.
        # 'fullres', applies to those), None / 'none' (the runs as trained) or a site name.
        self.site = None if site in (None, "", "none") else site
        self._site_runs: dict[str, list[LoadedRun]] = {}
        if self.site not in (None, AUTO_SITE):
            self._runs_for(self.site)  # a missing site is an error now, not at the first image
        self._auto = self._auto_site()

    def _runs_for(self, site: str | None) -> list[LoadedRun]:
        """The runs with ``site`` applied (loaded once per site); the plain runs for None."""
        if site is None:
            return self.runs
        if site not in self._site_runs:
            self._site_runs[site] = [load_run(r.path, r.device, site=site) for r in self.runs]
        return self._site_runs[site]

    def _auto_site(self) -> tuple[str, int] | None:
        """(name, min side px) of the site every run declares the default for large uploads."""
        if self.site != AUTO_SITE:
            return None
        found = None
        for run in self.runs:
            autos = []
            for name in list_sites(run.path):
                try:
                    side = read_site(run.path, name).auto_min_side
                except SiteError:
                    continue
                if side:
                    autos.append((name, side))
            if len(autos) != 1 or (found is not None and autos[0][0] != found[0]):
                return None
            found = autos[0] if found is None else (found[0], max(found[1], autos[0][1]))
        return found

    def choose_site(self, shape: tuple[int, int]) -> tuple[str | None, str]:
        """The site for an image of ``shape`` (H, W) as read, and why."""
        if self.site is None:
            return None, "no site profile: the model as trained"
        if self.site != AUTO_SITE:
            return self.site, f"site {self.site} chosen"
        side = max(shape)
        if self._auto is None:
            return None, "the model as trained (it has no site profile for large images)"
        name, min_side = self._auto
        if side >= min_side:
            return name, (f"the image is {side} px on its longer side, much larger than the training images "
                          f"(site {name} applies from {min_side} px)")
        return None, f"the image ({side} px) is like the training images (site {name} applies from {min_side} px)"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]

    def ood_reference(self, run: LoadedRun) -> OODReference | None:
        """The run's OOD reference, loaded (or built) on first use; None when OOD is off."""
        if not self.ood:
            return None
        if run.path not in self._ood_refs:  # computed under the caller's lock or before serving
            self._ood_refs[run.path] = load_ood_reference(run)
        return self._ood_refs[run.path]

    def warmup(self) -> None:
        """One dummy TTA batch and CAM per run: the first real image is then as fast as the rest
        (the first convolution on a CPU pays for kernel selection and thread start-up)."""
        with self._lock, cpu_threads(self.runs[0].device, self.threads):
            for run in self.runs:
                s = run.preprocess.size
                blank = np.zeros((s, s), np.uint8)
                self._forward(run, self.tta_inputs(run, blank, DEFAULT_TTA), True)
                self.cam(run, blank, True)

    def prepare_ood(self) -> None:
        """Build (or load) every run's OOD reference now (the page shows a spinner)."""
        with self._lock, cpu_threads(self.runs[0].device, self.threads):
            for run in self.runs:
                self.ood_reference(run)

    # -- stages (also timed by bench/bench_predict.py) ------------------------
    @staticmethod
    def tta_inputs(run: LoadedRun, u8: np.ndarray, n: int) -> np.ndarray:
        """(n, S, S) uint8: the image and n-1 seeded augmentations with the run's ranges, drawn
        as evaluation and calibration draw them (``h2a.inference.arrays.tta_views``)."""
        return tta_views(u8, Procedure.for_predict(n), run.preprocess)

    @staticmethod
    def forward(run: LoadedRun, batch_u8: np.ndarray, male: bool) -> tuple[np.ndarray, np.ndarray]:
        """Months for each copy (the site's correction applied) and the embedding of copy 0
        (one pass serves both), through the forward passes evaluation uses."""
        raw, emb = view_outputs(run.model, batch_u8[:, None], np.array([float(male)], np.float32), run.norm,
                                run.device, batch_size=max(len(batch_u8), 1), embed=True)
        months = run.months(raw[:, 0], np.full(len(raw), bool(male)))
        return np.asarray(months, np.float64), emb[0]

    def _forward(self, run: LoadedRun, batch_u8: np.ndarray, male: bool) -> tuple[np.ndarray, np.ndarray]:
        """``forward`` on the chosen backend: PyTorch, or the run's ONNX export (the same
        inputs, outputs and site correction; the heat map always comes from PyTorch)."""
        if self.backend == "torch":
            return self.forward(run, batch_u8, male)
        runner = self.onnx_runner(run)
        x = array_input(batch_u8, run.norm, torch.device("cpu"))
        raw, emb = runner.forward(x, np.full(len(x), float(male), np.float32))
        months = run.months(raw, np.full(len(raw), bool(male)))
        return np.asarray(months, np.float64), np.asarray(emb[0], np.float32)

    def onnx_runner(self, run: LoadedRun):
        """The ONNX graph of ``run`` as loaded (a site's statistics are in its weights, so a
        site with them gets its own graph, in its folder), exported on first use."""
        folder = run.site.path if run.site is not None and run.site.bn_stats else run.path
        path = folder / "model.onnx"
        if path not in self._onnx:
            weights = weights_file(run.path)
            if not path.exists() or (weights is not None and path.stat().st_mtime < weights.stat().st_mtime):
                export_model(copy.deepcopy(run.model).cpu(), int(run.preprocess.size), path,
                             meta={"h2a.task": run.task, "h2a.run": run.path.name,
                                   "h2a.site": run.site.name if run.site else ""})
            self._onnx[path] = OnnxRunner(path, threads=self.threads)
        return self._onnx[path]

    @staticmethod
    def cam(run: LoadedRun, u8: np.ndarray, male: bool) -> np.ndarray:
        """Grad-CAM at the model's input (the shared implementation)."""
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
            return PredictionResult(file=shown, error=res.error, model_runs=self.names, model_info=self.summaries,
                                    sex=res.sex, sex_source=res.sex_source)
        return res

    def _predict(self, res: PredictionResult, source: Source, name: str, sex: Any, dob: Any, exam_date: Any,
                 age_months: float | None, tta: int, want_cam: bool) -> None:
        t0 = time.perf_counter()
        male, ca, ca_source, img = self._read(res, source, name, sex, dob, exam_date, age_months)
        res.site, res.site_reason = self.choose_site(img.shape[:2])
        runs = self._runs_for(res.site)
        res.site_parts = runs[0].site.parts if runs[0].site is not None else []
        prepared = self._prepare(res, img)
        est = self._run_tta(res, prepared, male, tta, runs)
        self._combine(res, est, len(self.runs))
        res.measured_coverage = self._coverage(est, runs)
        self._model_alerts(res, est.ood_scores)
        if want_cam:
            self._cam_map(res, prepared, male, runs)
        if ca is not None:
            res.chronological_age_months, res.chronological_age_source = ca, ca_source
            res.assessment = assess(res.bone_age_months, ca, male)
            res.warnings += res.assessment.alerts
        res.timings["total"] = time.perf_counter() - t0

    def _read(self, res: PredictionResult, source: Source, name: str, sex: Any, dob: Any, exam_date: Any,
              age_months: float | None) -> tuple[bool, float | None, str | None, np.ndarray]:
        """Header facts, sex, age, the pixels and the image checks: (male, CA, CA source, image)."""
        t0 = time.perf_counter()
        info = read_header(source, name)
        res.dicom = info.dicom
        male, res.sex_source, alerts = resolve_sex(sex, info.dicom)
        res.sex = sex_word(male)
        res.warnings += alerts
        ca, ca_source, alerts = resolve_age(dob, exam_date, age_months, info.dicom)
        res.warnings += alerts
        img = read_image(source, name)
        res.timings["decode"] = time.perf_counter() - t0
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
        res.image_sha256 = hashlib.sha256(data if data is not None else Path(source).read_bytes()).hexdigest()
        res.original_size = (img.shape[1], img.shape[0])
        colour = colourfulness(source) if (info.channels >= 3 and not info.dicom) else None
        # inverted / rotated images come back corrected when the detector is certain; the
        # corrected image is what is predicted on and shown
        img, alerts = checked_image(img, info, colour)
        res.warnings += alerts
        return male, ca, ca_source, img

    def _prepare(self, res: PredictionResult, img: np.ndarray) -> dict[str, np.ndarray]:
        """The model input per distinct preprocessing (ensemble members often share one)."""
        t1 = time.perf_counter()
        prepared: dict[str, np.ndarray] = {}
        for run in self.runs:
            key = run.preprocess.cache_key()
            if key not in prepared:
                prepared[key] = prepare(img, run.preprocess)
        res.model_input = prepared[self.runs[0].preprocess.cache_key()]
        res.image = to_uint8(downscale(img, DISPLAY_SIDE))
        res.timings["preprocess"] = time.perf_counter() - t1
        return prepared

    def _run_tta(self, res: PredictionResult, prepared: dict[str, np.ndarray], male: bool, tta: int,
                 runs: list[LoadedRun]) -> _Estimate:
        """Each run's TTA mean and variance, its validation RMSE and its OOD score."""
        n = int(min(MAX_TTA, max(1, int(tta))))
        res.tta = n
        t2 = time.perf_counter()
        est = _Estimate()
        for plain, run in zip(self.runs, runs):
            inputs = self.tta_inputs(run, prepared[run.preprocess.cache_key()], n)
            months, emb = self._forward(run, inputs, male)
            if run is not plain:  # the OOD reference holds the trained model's embeddings
                emb = self._forward(plain, inputs[:1], male)[1]
            est.means.append(float(months.mean()))
            est.variances.append(float(months.var(ddof=1)) if n > 1 else 0.0)
            rmse = run.meta.get("metrics", {}).get("rmse")
            if rmse is not None:
                est.rmses.append(float(rmse))
            res.members.append({"run": run.path.name, "bone_age_months": round(est.means[-1], 2),
                                "tta_sd_months": round(float(np.sqrt(est.variances[-1])), 3)})
            conf = run.conformal
            if conf is not None:  # the group comes from this member's own estimate and the given sex
                group = conf.groups_of([est.means[-1]], [male])[0]
                est.half_widths.append(float(conf.half_width([est.means[-1]], [male])[0]))
                est.methods.append(conf.describe(group))
                est.levels.append(conf.level)
                est.mismatch |= run.calibrated_procedure != Procedure.for_predict(n)
                res.members[-1]["interval_half_width_months"] = round(est.half_widths[-1], 2)
            ref = self.ood_reference(run)
            if ref is not None:
                est.ood_scores.append(ref.score(emb))
        res.timings["model_tta"] = time.perf_counter() - t2
        return est

    @staticmethod
    def _coverage(est: _Estimate, runs: list[LoadedRun]) -> dict | None:
        """The run's measured interval coverage (one calibrated run only: an ensemble's was never measured)."""
        if len(runs) == 1 and len(est.half_widths) == 1:
            return runs[0].measured_coverage()
        return None

    @staticmethod
    def _combine(res: PredictionResult, est: _Estimate, n_runs: int = 1) -> None:
        """The estimate and its interval (see the module docstring) from the runs' outcomes."""
        ba = float(np.mean(est.means))
        sd_tta = float(np.sqrt(np.mean(est.variances) + (np.var(est.means) if len(est.means) > 1 else 0.0)))
        rmse = float(np.mean(est.rmses)) if est.rmses else None
        res.tta_sd_months, res.rmse_months = sd_tta, rmse
        if ba < 0:
            res.warnings.append(Alert(Code.NEGATIVE_BONE_AGE,
                                      f"the model predicted a negative bone age ({ba:.1f} months); shown as 0"))
            ba = 0.0
        res.bone_age_months = ba
        if est.half_widths and len(est.half_widths) == n_runs:
            half = float(np.mean(est.half_widths))
            res.interval_source = "conformal"
            res.interval_level = float(np.mean(est.levels))
            res.interval_method = est.methods[0] if n_runs == 1 else (
                f"{'; '.join(est.methods)} (ensemble: the members' half-widths averaged)")
            res.interval_procedure_mismatch = est.mismatch
            if est.mismatch:
                res.interval_method += (f"; calibrated for another number of TTA copies than the {res.tta} used "
                                        "here, so its coverage is approximate")
            res.interval_months = (max(0.0, ba - half), ba + half)
        else:
            sd = max(sd_tta, rmse or 0.0)
            res.interval_source = "tta" if rmse is None or sd_tta >= rmse else "validation rmse"
            res.interval_level = 0.95
            res.interval_method = LEGACY_INTERVAL if not est.half_widths else (
                LEGACY_INTERVAL.replace("this run has", "some ensemble members have"))
            res.interval_months = (max(0.0, ba - Z95 * sd), ba + Z95 * sd)
        if ba > RSNA_MAX_MONTHS:
            res.warnings.append(Alert(Code.BEYOND_TRAINING_RANGE, f"bone age {ba / 12:.1f} y is beyond the range "
                                                                  "of the RSNA training data (0-19 y)"))

    def _model_alerts(self, res: PredictionResult, ood_scores: list[float]) -> None:
        """Whether the models can be trusted on this image: OOD first (it matters most), synthetic runs."""
        if ood_scores:
            res.ood_score = float(max(ood_scores))
            alert = ood_alert(res.ood_score)
            if alert is not None:
                res.warnings.insert(0, alert)
        elif self.ood:
            res.warnings.append(OOD_UNCHECKED)
        synthetic = [s["run"] for s in self.summaries if s["synthetic"]]
        if synthetic:
            res.warnings.append(Alert(Code.SYNTHETIC_MODEL, f"model {', '.join(synthetic)} was trained on SYNTHETIC "
                                                            "demo images: its estimate for a real radiograph is not "
                                                            "meaningful"))

    def _cam_map(self, res: PredictionResult, prepared: dict[str, np.ndarray], male: bool,
                 runs: list[LoadedRun]) -> None:
        """Mean Grad-CAM over the runs, in the displayed image's geometry, scaled to [0, 1]."""
        t3 = time.perf_counter()
        maps = [cam_to_image(self.cam(run, prepared[run.preprocess.cache_key()], male), res.image.shape,
                             run.preprocess, res.image) for run in runs]
        c = np.mean(maps, axis=0)
        peak = float(c.max())
        res.cam = (c / peak if peak > 0 else c).astype(np.float32)
        res.timings["cam"] = time.perf_counter() - t3
