"""A site profile: how images from one source differ from a run's training images, and
what undoes it (``RUN/sites/SITE/``).

Why: a model trained on one hospital's images (or on 100 px thumbnails) reads another
source's images with a shift: the RSNA recipe model reads full-resolution radiographs
5-8 months too old. The field's answer is local adaptation, here in three parts, each
kept only where cross-validation on the site's own images shows it helps
(``h2a.inference.sites.fit_site`` decides; this module only stores and applies):

* ``bn``: BatchNorm statistics re-estimated on the site's images (AdaBN, Li et al. 2016):
  the normalisation the trunk depends on, fitted without labels;
* ``correction``: a sex-specific linear correction of the estimate (intercept, or
  intercept and slope), shrunk toward no correction when the images are few
  (``SexCorrection``);
* ``interval``: the run's conformal widths rescaled by one factor fitted on the site's
  own residuals (``SiteInterval``): split-conformal on the site, keeping the run's shape
  over age and sex, which 50 images cannot estimate on their own.

Files: ``site.json`` (what it was fitted on, when, the parts and the cross-validated
report) and ``bn_stats.safetensors`` (the BatchNorm buffers, when that part is kept).
A run folder copied elsewhere keeps its sites: nothing here names an absolute path it
needs. Core module: numpy, torch, safetensors; no streamlit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from h2a.inference.conformal import conformal_quantile
from h2a.run import atomic_write_bytes, atomic_write_json, read_json

__all__ = ["BN_FILE", "SITES_DIR", "SITE_FILE", "SexCorrection", "SiteError", "SiteInterval", "SiteProfile",
           "apply_bn_stats", "bn_buffers", "list_sites", "read_site", "site_dir", "valid_site_name"]

SITES_DIR = "sites"
SITE_FILE = "site.json"
BN_FILE = "bn_stats.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SiteError(ValueError):
    """A site that cannot be fitted or read; the message is one line for the user."""


def valid_site_name(name: str) -> str:
    """A site name is a folder name: letters, digits, '_', '-', '.', at most 64."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise SiteError(f"site name {name!r}: use letters, digits, '_', '-' or '.' (at most 64, no leading dot)")
    return name


def site_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / SITES_DIR / valid_site_name(name)


def list_sites(run_dir: str | Path) -> list[str]:
    """Names of the run's fitted sites (folders holding a site.json), sorted."""
    root = Path(run_dir) / SITES_DIR
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / SITE_FILE).is_file() and _NAME.match(d.name))


# ---------------------------------------------------------------- BatchNorm statistics

def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The running mean and variance of every BatchNorm, by state-dict name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out[f"{name}.running_mean"] = m.running_mean.detach().cpu().clone()
            out[f"{name}.running_var"] = m.running_var.detach().cpu().clone()
    return out


def apply_bn_stats(model: nn.Module, stats: dict[str, torch.Tensor]) -> int:
    """Load BatchNorm buffers into an unfolded model; returns how many tensors were set.
    A name the model lacks is an error: the profile belongs to another architecture."""
    own = model.state_dict()
    missing = [k for k in stats if k not in own]
    if missing:
        raise SiteError(f"site statistics do not fit this model ({len(missing)} unknown tensors, e.g. {missing[0]})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in stats.items()}, strict=False)
    return len(stats)


# ---------------------------------------------------------------- correction of the estimate

CORRECTION_FORMS = ("intercept", "intercept+slope")
SHRINK_IMAGES = 10.0  # pseudo-images pulling each sex toward the pooled fit, and the pooled fit toward none
SLOPE_SHRINK = 4.0  # the slope is shrunk harder: a wrong slope hurts most at the ends


@dataclass
class SexCorrection:
    """``corrected = pred + a_s + c_s * (pred - centre_)``, per sex s, fitted by shrunk least squares.

    Shrinkage (two levels, ridge in closed form): the pooled coefficients are pulled toward
    0 (no correction) by ``SHRINK_IMAGES`` pseudo-images, each sex's toward the pooled ones
    by as many; the slope ``SLOPE_SHRINK`` times harder. So 15 images move the estimate
    about 60% of their mean residual, 150 images 94%. sklearn style: ``fit`` returns self,
    learned attributes end in ``_``.
    """

    form: str = "intercept"
    shrink: float = SHRINK_IMAGES
    coef_: dict[str, tuple[float, float]] = field(default_factory=dict)  # 'male'/'female'/'pooled' -> (a, c)
    centre_: float = 0.0
    n_: dict[str, int] = field(default_factory=dict)

    def fit(self, pred: np.ndarray, y: np.ndarray, male: np.ndarray) -> SexCorrection:
        if self.form not in CORRECTION_FORMS:
            raise SiteError(f"unknown correction form {self.form!r} (one of {', '.join(CORRECTION_FORMS)})")
        pred, y, male = np.asarray(pred, float), np.asarray(y, float), np.asarray(male, bool)
        self.centre_ = float(pred.mean()) if len(pred) else 0.0
        slope = self.form == "intercept+slope"
        pooled = self._ridge(pred, y, (0.0, 0.0), slope)
        self.coef_ = {"pooled": pooled}
        self.n_ = {"pooled": int(len(pred))}
        for sex, mask in (("male", male), ("female", ~male)):
            self.coef_[sex] = self._ridge(pred[mask], y[mask], pooled, slope)
            self.n_[sex] = int(mask.sum())
        return self

    def _ridge(self, pred: np.ndarray, y: np.ndarray, prior: tuple[float, float], slope: bool) -> tuple[float, float]:
        """Least squares of the residual on (1, pred - centre), shrunk toward ``prior``."""
        r = y - pred
        x = pred - self.centre_
        if not slope:
            a = (r.sum() + self.shrink * prior[0]) / (len(r) + self.shrink)
            return float(a), 0.0
        design = np.stack([np.ones_like(x), x], 1)
        scale = float(np.var(x)) if len(x) > 1 and np.var(x) > 0 else 1.0
        penalty = np.diag([self.shrink, self.shrink * SLOPE_SHRINK * scale])
        lhs = design.T @ design + penalty
        rhs = design.T @ r + penalty @ np.asarray(prior, float)
        a, c = np.linalg.solve(lhs, rhs)
        return float(a), float(c)

    def apply(self, pred: np.ndarray, male: np.ndarray) -> np.ndarray:
        pred = np.asarray(pred, float)
        male = np.broadcast_to(np.asarray(male, bool), pred.shape)
        a = np.where(male, self.coef_["male"][0], self.coef_["female"][0])
        c = np.where(male, self.coef_["male"][1], self.coef_["female"][1])
        return pred + a + c * (pred - self.centre_)

    def describe(self) -> str:
        parts = []
        for sex in ("female", "male"):
            a, c = self.coef_[sex]
            parts.append(f"{sex} {a:+.1f} months" + (f", slope {c:+.3f}" if self.form != "intercept" else ""))
        return f"sex-specific {self.form} correction ({'; '.join(parts)}; {self.n_.get('pooled', 0)} images)"

    def to_dict(self) -> dict:
        return {"form": self.form, "shrink_images": self.shrink, "centre_months": self.centre_,
                "coefficients": {k: {"intercept": a, "slope": c} for k, (a, c) in self.coef_.items()},
                "n": dict(self.n_)}

    @classmethod
    def from_dict(cls, d: dict) -> SexCorrection:
        c = cls(str(d["form"]), float(d.get("shrink_images", SHRINK_IMAGES)))
        c.centre_ = float(d["centre_months"])
        c.coef_ = {k: (float(v["intercept"]), float(v["slope"])) for k, v in d["coefficients"].items()}
        c.n_ = {k: int(v) for k, v in d.get("n", {}).items()}
        return c


# ---------------------------------------------------------------- interval on the site

class SiteInterval:
    """The run's conformal interval with its half-widths multiplied by ``q_``, fitted as a
    split-conformal quantile of ``|y - pred| / base half-width`` on the site's images.

    One parameter, so 20-50 site residuals suffice (the ``ceil((n + 1) level)`` rank
    guarantee holds for the site, as exchangeable images), while the run's fit keeps the
    width's shape over predicted age and sex. Offers what the callers of the run's own
    conformal objects use (interval, half_width, groups_of, describe, grouping, level, n_).
    """

    def __init__(self, base, q: float | None = None, n: int = 0, site: str = "") -> None:
        self.base = base
        self.level = base.level
        self.site = site
        if q is not None:
            self.q_, self.n_ = float(q), int(n)

    method = "split-conformal on the site (the run's widths rescaled)"

    def fit(self, pred: np.ndarray, y: np.ndarray, male: np.ndarray) -> SiteInterval:
        pred, y = np.asarray(pred, float), np.asarray(y, float)
        h = self.base.half_width(pred, male)
        self.q_ = conformal_quantile(np.abs(y - pred) / np.maximum(h, 1e-6), self.level)
        self.n_ = int(len(pred))
        return self

    def half_width(self, pred: np.ndarray, male: np.ndarray | None = None) -> np.ndarray:
        return self.q_ * self.base.half_width(pred, male)

    def interval(self, pred: np.ndarray, male: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        pred = np.asarray(pred, float)
        h = self.half_width(pred, male)
        return np.maximum(0.0, pred - h), pred + h

    def groups_of(self, pred: np.ndarray, male: np.ndarray) -> np.ndarray:
        return self.base.groups_of(pred, male)

    def grouping(self) -> str:
        return f"{self.base.grouping()}; widths x {self.q_:.2f} from {self.n_} images of site {self.site}"

    def describe(self, group: str | None = None) -> str:
        return (f"{self.base.describe(group)}; rescaled x {self.q_:.2f} on site {self.site} "
                f"(split-conformal on its {self.n_} images)")

    def to_dict(self) -> dict:
        return {"method": self.method, "level": self.level, "q": self.q_, "n": self.n_}


# ---------------------------------------------------------------- the profile

@dataclass
class SiteProfile:
    """A fitted site as stored: which parts are kept and their fitted values."""

    name: str
    path: Path
    info: dict  # site.json
    bn_stats: dict[str, torch.Tensor] | None = None
    correction: SexCorrection | None = None

    @property
    def parts(self) -> list[str]:
        """The kept parts, in the order they act."""
        return [p for p, v in (self.info.get("parts") or {}).items() if v.get("kept")]

    def interval(self, base) -> SiteInterval | None:
        """The site's interval over the run's own conformal object, when that part is kept."""
        part = (self.info.get("parts") or {}).get("interval") or {}
        if not part.get("kept") or base is None:
            return None
        return SiteInterval(base, part["q"], part.get("n", 0), self.name)

    def adjust(self, months: np.ndarray, male: np.ndarray) -> np.ndarray:
        """The estimate after the site's correction (unchanged without one)."""
        return self.correction.apply(months, male) if self.correction is not None else np.asarray(months, float)

    @property
    def auto_min_side(self) -> int | None:
        """Uploads whose longer side reaches this many pixels get this site by default."""
        auto = self.info.get("auto") or {}
        return int(auto["min_side_px"]) if auto.get("min_side_px") else None

    def describe(self) -> str:
        kept = self.parts
        fitted = self.info.get("fitted_on") or {}
        return (f"site {self.name}: {', '.join(kept) if kept else 'no part kept'} (fitted on "
                f"{fitted.get('n_images', '?')} images of {fitted.get('data_name', '?')}, "
                f"{str(self.info.get('created', ''))[:10]})")


def read_site(run_dir: str | Path, name: str) -> SiteProfile:
    """The stored profile ``name`` of a run; SiteError naming what is missing or broken."""
    folder = site_dir(run_dir, name)
    info = read_json(folder / SITE_FILE)
    if info is None:
        have = list_sites(run_dir)
        raise SiteError(f"run {Path(run_dir).name} has no site {name!r}"
                        + (f" (it has: {', '.join(have)})" if have else " (fit one with h2a adapt)"))
    parts = info.get("parts") or {}
    stats = None
    if (parts.get("bn") or {}).get("kept"):
        try:
            stats = load_file(str(folder / BN_FILE))
        except (OSError, ValueError, RuntimeError) as exc:
            raise SiteError(f"site {name}: {BN_FILE} cannot be read ({exc})") from exc
    corr = parts.get("correction") or {}
    correction = SexCorrection.from_dict(corr["model"]) if corr.get("kept") else None
    return SiteProfile(name, folder, info, stats, correction)


def write_site(folder: Path, info: dict, bn_stats: dict[str, torch.Tensor] | None) -> None:
    """site.json and, when given, the BatchNorm buffers; atomically each (a reader never
    sees a half-written profile: the JSON that names the parts is written last)."""
    folder.mkdir(parents=True, exist_ok=True)
    if bn_stats is not None:
        tmp = folder / f".{BN_FILE}.tmp"
        save_file({k: v.contiguous() for k, v in bn_stats.items()}, str(tmp))
        atomic_write_bytes(folder / BN_FILE, tmp.read_bytes())
        tmp.unlink(missing_ok=True)
    else:
        (folder / BN_FILE).unlink(missing_ok=True)
    atomic_write_json(folder / SITE_FILE, info)
