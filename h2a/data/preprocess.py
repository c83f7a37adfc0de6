"""Preprocessing: one config that travels with every model and is re-applied at prediction.

The work splits in two on purpose:

* ``prepare`` is the *deterministic* part (geometry + contrast) and returns uint8. Its
  output is what the tensor cache stores, so only the fields it reads enter
  ``PreprocessConfig.cache_key``.
* augmentation and normalisation (``h2a.data.transforms``) run on the training device per
  batch, so changing them never invalidates a cache.

This module never imports torch, so cache worker processes (which only call ``prepare``)
start quickly and stay small.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from h2a.options import coerce_numbers, declared_kwargs, option, problems
from h2a.settings import get_settings
from h2a.data.imageio import ImageReadError, read_image

# Bump when ``prepare`` changes its output for the same config: old caches then miss.
PREPROCESS_VERSION = 1

RESIZE_MODES = ("squash", "pad", "crop")
CONTRAST_MODES = ("none", "hist_eq", "clahe")
NORMALIZE_MODES = ("imagenet", "per_image")
INTENSITY_MODES = ("none", "percentile")
# The robust window of ``intensity="percentile"``: outlying pixels (labels, burnt-out
# corners, dead detector rows) do not set the scale; a 1-99% window does.
INTENSITY_PERCENTILES = (1.0, 99.0)
# Below this window (of [0, 1]) the image is nearly uniform: stretching it would only
# amplify noise, so it is left as decoded.
MIN_INTENSITY_WINDOW = 1e-3
# The JPEG qualities photometric augmentation draws from: 30 is the robustness report's
# harsh case, 95 about what a PACS export or a phone photo of a screen gives.
JPEG_QUALITY_RANGE = (30, 95)

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything needed to turn a decoded radiograph into a model input.

    Each field is declared once (``h2a.options.option``): the CLI flags, the checks and
    the page widgets are built from these declarations.
    """

    size: int = option(256, minimum=16, maximum=2048, cli="--image-size", group="preprocessing",
                       label="Image size", unit="px",
                       form={"widget": "select_slider",
                             "values": [64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 500, 512]},
                       help="output side in pixels")
    resize: str = option("pad", choices=RESIZE_MODES, group="preprocessing", label="Geometry",
                         help="pad: keep aspect, black bars; squash: plain resize; crop: keep aspect, centre crop")
    hand_crop: bool = option(False, group="preprocessing", label="Crop to the hand",
                             help="cut the image to the hand's box plus a margin (largest bright region; "
                                  "h2a.data.orientation.crop_to_hand) before the geometry, so the hand fills "
                                  "the input however it was framed; no hand found: the whole image")
    intensity: str = option("none", choices=INTENSITY_MODES, group="preprocessing",
                            label="Intensity standardisation",
                            form={"labels": {"none": "none", "percentile": "percentile window 1-99%"}},
                            help="percentile: stretch each image's 1st-99th percentile (of the content, "
                                 "padding excluded) to black-white before contrast, so exposure and "
                                 "window settings of the source matter less (changes the tensor cache); "
                                 "none: as decoded")
    contrast: str = option("none", choices=CONTRAST_MODES, group="preprocessing", label="Contrast",
                           form={"labels": {"none": "none", "hist_eq": "hist. equalisation", "clahe": "CLAHE"}},
                           help="contrast enhancement of the image content (padding excluded)")
    clahe_clip: float = option(2.0, minimum=0.0, exclusive_min=True, maximum=100.0, group="preprocessing",
                               label="CLAHE clip limit", form={"widget": "slider", "min": 0.5, "max": 8.0, "step": 0.5},
                               help="CLAHE clip limit (with --contrast clahe)")
    clahe_grid: int = option(8, minimum=1, maximum=64, group="preprocessing", label="CLAHE grid",
                             form={"widget": "slider", "min": 2, "max": 16},
                             help="CLAHE tiles per side (with --contrast clahe)")
    normalize: str = option("imagenet", choices=NORMALIZE_MODES, group="preprocessing", label="Normalisation",
                            help="imagenet: the mean/std the architecture's pretrained weights expect; "
                                 "per_image: each image to zero mean and unit sd")
    flip: bool = option(True, group="augmentation", label="Horizontal flip",
                        help="random horizontal flip while training")
    shift: float = option(0.05, minimum=0.0, maximum=0.5, group="augmentation", label="Shift",
                          unit="fraction of size", form={"widget": "slider", "max": 0.3, "step": 0.01},
                          help="random shift while training, as a fraction of the size")
    rotation: float = option(10.0, minimum=0.0, maximum=180.0, group="augmentation", label="Rotation",
                             unit="degrees", form={"widget": "slider", "max": 45.0, "step": 1.0},
                             help="random rotation while training, up to this many degrees")
    zoom: float = option(0.10, minimum=0.0, maximum=1.0, exclusive_max=True, group="augmentation",
                         label="Zoom", unit="±fraction", form={"widget": "slider", "max": 0.5, "step": 0.01},
                         help="random zoom while training, by up to this fraction either way")
    # Photometric augmentation (h2a.data.transforms.photometric): how the image was made
    # (exposure, detector, resampling, compression) rather than how the hand lay. Off (0)
    # by default, so earlier runs and their configs mean what they meant.
    aug_gamma: float = option(0.0, minimum=0.0, maximum=3.0, group="augmentation", label="Gamma",
                              form={"widget": "slider", "max": 1.0, "step": 0.05},
                              help="random gamma drawn log-uniformly between 1/(1+x) and 1+x while training "
                                   "(0.6: gamma 0.63-1.6); 0 = off")
    aug_contrast: float = option(0.0, minimum=0.0, maximum=1.0, exclusive_max=True, group="augmentation",
                                 label="Contrast", unit="±fraction",
                                 form={"widget": "slider", "max": 0.5, "step": 0.05},
                                 help="random contrast factor between 1-x and 1+x about the image's mean "
                                      "while training (black stays black); 0 = off")
    aug_blur: float = option(0.0, minimum=0.0, maximum=5.0, group="augmentation", label="Blur / sharpen",
                             unit="sigma px", form={"widget": "slider", "max": 2.0, "step": 0.1},
                             help="random Gaussian blur (half the time) or unsharp-mask sharpening (the "
                                  "other half) with sigma up to this many pixels of the prepared image "
                                  "while training; 0 = off")
    aug_downscale: float = option(0.0, minimum=0.0, maximum=1.0, exclusive_max=True, group="augmentation",
                                  label="Downscale-upscale", unit="fraction",
                                  form={"widget": "slider", "max": 0.75, "step": 0.05},
                                  help="random downscale to between 1-x and 1 of the size and back, each way "
                                       "with a random filter (nearest, linear, area, cubic), while training; "
                                       "0 = off")
    aug_noise: float = option(0.0, minimum=0.0, maximum=64.0, group="augmentation", label="Noise",
                              unit="sd, grey levels", form={"widget": "slider", "max": 20.0, "step": 1.0},
                              help="Gaussian noise with an sd drawn up to this many grey levels (of 255) "
                                   "while training (black stays black); 0 = off")
    aug_jpeg: float = option(0.0, minimum=0.0, maximum=1.0, group="augmentation", label="JPEG artefacts",
                             unit="probability", form={"widget": "slider", "max": 1.0, "step": 0.05},
                             help=f"probability of JPEG re-compression at a random quality from "
                                  f"{JPEG_QUALITY_RANGE[0]} to {JPEG_QUALITY_RANGE[1]} while training; 0 = off")

    @property
    def photometric(self) -> bool:
        """Whether any photometric augmentation is on."""
        return any(getattr(self, name) > 0 for name in PHOTOMETRIC_FIELDS)

    def __post_init__(self) -> None:
        coerce_numbers(self)  # equal configs hash and serialise equally
        self.validate()

    # -- validation ---------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming every bad option at once; called on construction.

        Types, choices and ranges come from the declarations; there is no cross-field rule.
        """
        found = problems(self)
        if found:
            raise ValueError("Invalid preprocessing config: " + "; ".join(found))

    # -- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Build from JSON-like data; unknown keys are ignored so old/new files still load."""
        if not isinstance(d, dict):
            raise ValueError(f"Preprocessing config must be a mapping, got {type(d).__name__}")
        return cls(**declared_kwargs(cls, d))

    def deterministic_dict(self) -> dict:
        """The fields that change ``prepare``'s output (CLAHE params only when used; the
        intensity standardisation only when on, so caches built before it keep their keys)."""
        out: dict[str, Any] = {
            "v": PREPROCESS_VERSION,
            "size": self.size,
            "resize": self.resize,
            "contrast": self.contrast,
        }
        if self.hand_crop:
            out["hand_crop"] = True
        if self.intensity != "none":
            out["intensity"] = self.intensity
        if self.contrast == "clahe":
            out["clahe_clip"] = float(self.clahe_clip)
            out["clahe_grid"] = int(self.clahe_grid)
        return out

    def cache_key(self) -> str:
        """Short stable hash of the deterministic fields: augmentation/normalisation
        changes reuse the same tensor cache."""
        blob = json.dumps(self.deterministic_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# The photometric augmentation fields, in the order ``h2a.data.transforms`` applies them.
PHOTOMETRIC_FIELDS = ("aug_downscale", "aug_blur", "aug_gamma", "aug_contrast", "aug_noise", "aug_jpeg")


# -- deterministic part ---------------------------------------------------------------
def _to_float2d(img: np.ndarray) -> np.ndarray:
    """Accept the imageio contract (2-D float [0,1]) and forgive (H,W,1) / uint8 input."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise ValueError(f"Expected a 2-D grayscale image, got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"Image is empty (shape {a.shape})")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    return a


def _resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    shrinking = w <= a.shape[1] and h <= a.shape[0]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if (h, w) == a.shape:
        return a
    return cv2.resize(a, (w, h), interpolation=interp)


def standardize_intensity(a: np.ndarray, mode: str) -> np.ndarray:
    """Float [0, 1] content -> the same with its robust window stretched to [0, 1].

    Per image, so it needs no reference set and works on a single upload; on the content
    only (``prepare`` calls it before padding), so black bars never set the window.
    """
    if mode == "none":
        return a
    if mode != "percentile":
        raise ValueError(f"unknown intensity standardisation {mode!r} (one of {', '.join(INTENSITY_MODES)})")
    lo, hi = np.percentile(a, INTENSITY_PERCENTILES)
    if hi - lo < MIN_INTENSITY_WINDOW:
        return a
    return np.clip((a - lo) * (1.0 / (hi - lo)), 0.0, 1.0).astype(np.float32, copy=False)


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _contrast(u8: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    if cfg.contrast == "hist_eq":
        return cv2.equalizeHist(np.ascontiguousarray(u8))
    if cfg.contrast == "clahe":
        clahe = cv2.createCLAHE(clipLimit=float(cfg.clahe_clip),
                                tileGridSize=(cfg.clahe_grid, cfg.clahe_grid))
        return clahe.apply(np.ascontiguousarray(u8))
    return u8


def prepare(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """float [0,1] (H,W) -> uint8 (size,size): geometry, then intensity standardisation and
    contrast on the content only (before padding, so black bars do not skew the percentile
    window, histogram equalisation or CLAHE)."""
    a = _to_float2d(img)
    if cfg.hand_crop:
        from h2a.data.orientation import crop_to_hand  # orientation is heavier; only when asked

        a = crop_to_hand(a)
    s = cfg.size
    h, w = a.shape
    if cfg.resize == "squash":
        content = _resize(a, s, s)
    elif cfg.resize == "pad":
        scale = s / max(h, w)
        nh = min(s, max(1, round(h * scale)))
        nw = min(s, max(1, round(w * scale)))
        content = _resize(a, nw, nh)
    else:  # crop: the centred square of side min(h, w), cut before resizing (cheaper)
        side = min(h, w)
        y0 = (h - side) // 2
        x0 = (w - side) // 2
        content = _resize(a[y0:y0 + side, x0:x0 + side], s, s)
    u8 = _contrast(_to_u8(standardize_intensity(content, cfg.intensity)), cfg)
    if u8.shape == (s, s):
        return np.ascontiguousarray(u8)
    out = np.zeros((s, s), dtype=np.uint8)
    ch, cw = u8.shape
    y0 = (s - ch) // 2
    x0 = (s - cw) // 2
    out[y0:y0 + ch, x0:x0 + cw] = u8
    return out


def prepare_file(path_or_bytes: str | os.PathLike | bytes, cfg: PreprocessConfig,
                 name: str | None = None) -> np.ndarray:
    """Decode (via the one decoder, ``h2a.data.imageio``) then ``prepare``."""
    return prepare(read_image(path_or_bytes, name=name), cfg)


def prepare_chunk(task: Sequence) -> tuple[int, list[tuple[int, str]], int]:
    """Prepare a slice of rows straight into the tensor-cache memmap.

    Lives here (not in ``h2a.data.cache``) so cache worker processes never import torch.
    ``task`` = (memmap path, total rows, first row, paths, config dict, single_thread).
    Returns (first row, [(row, error message)], rows done): only errors travel back, so
    IPC stays tiny whatever the image size.
    """
    mm_path, n_total, start, paths, cfg_dict, single_thread = task
    if single_thread:
        cv2.setNumThreads(1)
    cfg = PreprocessConfig.from_dict(cfg_dict)
    s = cfg.size
    mm = np.memmap(mm_path, dtype=np.uint8, mode="r+", shape=(n_total, s, s))
    errors: list[tuple[int, str]] = []
    try:
        for k, path in enumerate(paths):
            row = start + k
            fname = Path(path).name
            try:
                mm[row] = prepare(read_image(path), cfg)
                continue
            except ImageReadError as exc:
                msg = str(exc)
            except Exception as exc:  # a bad file must never stop the build
                msg = f"unexpected {type(exc).__name__}: {exc}"
            if fname not in msg:
                msg = f"{fname}: {msg}"
            mm[row] = 0
            errors.append((row, msg))
        mm.flush()
    finally:
        del mm
    return start, errors, len(paths)


# -- named configs on disk --------------------------------------------------------------
def _configs_dir(directory: Path | None) -> Path:
    return Path(directory) if directory is not None else get_settings().configs_dir


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name.strip()):
        raise ValueError(
            f"Config name {name!r} is not allowed: use 1-64 letters, digits, '-' or '_' "
            "(no spaces, dots or slashes)"
        )
    return name.strip()


def save_config(name: str, cfg: PreprocessConfig, directory: Path | None = None) -> Path:
    """Save as ``<name>.json`` (atomic replace, so a reader never sees half a file)."""
    name = _check_name(name)
    d = _configs_dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = d / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(cfg.to_dict(), fh, indent=2, sort_keys=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_config(name: str, directory: Path | None = None) -> PreprocessConfig:
    name = _check_name(name)
    path = _configs_dir(directory) / f"{name}.json"
    if not path.is_file():
        have = list_configs(directory)
        raise FileNotFoundError(
            f"No preprocessing config named {name!r} in {path.parent}"
            + (f" (saved: {', '.join(have)})" if have else " (none saved yet)")
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not valid JSON ({exc})") from exc
    return PreprocessConfig.from_dict(data)


def list_configs(directory: Path | None = None) -> list[str]:
    d = _configs_dir(directory)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if _NAME_RE.match(p.stem))


__all__: Sequence[str] = (
    "PreprocessConfig", "prepare", "prepare_file", "save_config", "load_config", "list_configs",
    "PREPROCESS_VERSION", "INTENSITY_MODES", "INTENSITY_PERCENTILES", "JPEG_QUALITY_RANGE", "PHOTOMETRIC_FIELDS",
    "standardize_intensity",
)
