"""Loading a finished run as an inference-only model with everything needed to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from h2a.data.preprocess import PreprocessConfig
from h2a.data.transforms import input_norm
from h2a.device import use_channels_last
from h2a.run import Run, load_weights
from h2a.inference.tasks import Task, task_of_run
from h2a.inference.calibration import measured_coverage
from h2a.inference.conformal import MondrianConformal, NormalisedConformal, Procedure, conformal_from_dict
from h2a.inference.site_profile import SiteInterval, SiteProfile, apply_bn_stats, read_site
from h2a.models import H2AModel, create_model, fold_batchnorm


@dataclass
class LoadedRun:
    """A trained model ready to predict, with everything needed to feed it.

    Inference only: its BatchNorms are folded into the convolutions (``fold_batchnorm``).
    """

    path: Path
    model: H2AModel
    meta: dict
    preprocess: PreprocessConfig
    norm: tuple[float, float] | None
    device: torch.device
    calibration: dict | None = field(default=None)  # calibration.json (None: an old run, none fitted)
    site: SiteProfile | None = field(default=None)  # the site profile applied (RUN/sites/SITE), if any

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def task_obj(self) -> Task:
        """The run's Task, with the target scaling it was trained with and its calibration."""
        return task_of_run(self.meta, self.calibration)

    def to_output(self, raw: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Model scalars -> months (bone age) or P(male) (sex; temperature-scaled when the run
        has a calibration, unless ``calibrated=False``)."""
        return self.task_obj.to_output(raw, calibrated)

    def months(self, raw: np.ndarray, male: np.ndarray) -> np.ndarray:
        """Bone-age estimates in months: ``to_output`` then the site's correction (if any).
        Every bone-age figure goes through here, so a site is applied the same everywhere."""
        out = np.asarray(self.to_output(raw), float)
        return self.site.adjust(out, male) if self.site is not None else out

    @property
    def conformal(self) -> MondrianConformal | NormalisedConformal | SiteInterval | None:
        """The bone-age run's conformal interval calibration (rescaled on the site when the
        site profile keeps its interval part), or None."""
        cal = self.calibration or {}
        base = conformal_from_dict(cal["interval"]) if "interval" in cal else None
        if self.site is not None and base is not None:
            return self.site.interval(base) or base
        return base

    @property
    def calibrated_procedure(self) -> Procedure | None:
        """The prediction procedure the calibration's residuals or logits came from."""
        return Procedure.from_dict(self.calibration["procedure"]) if self.calibration else None

    def measured_coverage(self) -> dict | None:
        """The interval's measured coverage and where it was measured (see calibration.measured_coverage);
        with a site profile, its cross-validated coverage on the site's own images."""
        if self.site is not None:
            after = ((self.site.info.get("report") or {}).get("after") or {})
            if after.get("coverage") is not None:
                n = after.get("n", 0)
                return {"coverage": after["coverage"], "n": n, "width_months": after.get("width_months"),
                        "source": f"site {self.site.name} cross-validation",
                        "text": f"{100 * after['coverage']:.1f}% on {n} images of site {self.site.name} "
                                "(cross-validated: each image's interval fitted without it)"}
        return measured_coverage(self.path, self.calibration)


def load_run(run_dir: str | Path, device: torch.device | None = None, *, fold_bn: bool = True,
             site: str | None = None, bn_stats: dict[str, torch.Tensor] | None = None) -> LoadedRun:
    """Rebuild the architecture from metadata.json and load model.pt (weights only).

    ``fold_bn=False`` keeps the BatchNorms (bench/bench_inference.py and site fitting).
    ``site``: a fitted site profile of the run (``RUN/sites/SITE``): its BatchNorm statistics
    go into the model before folding, its correction and interval into ``months`` and
    ``conformal``. ``bn_stats``: BatchNorm buffers to use instead (site fitting's folds).
    """
    run_dir = Path(run_dir)
    run = Run.at(run_dir)
    meta = run.meta
    if meta is None or run.weights is None:
        raise FileNotFoundError(f"{run_dir.name}: not a finished run (no metadata.json / model.pt yet)")
    device = device or torch.device("cpu")
    kwargs = dict(meta["model"])
    name = kwargs.pop("name")
    model = create_model(name, pretrained=False, **kwargs)
    model.load_state_dict(load_weights(run_dir))
    profile = read_site(run_dir, site) if site else None
    stats = bn_stats if bn_stats is not None else (profile.bn_stats if profile is not None else None)
    if stats:
        apply_bn_stats(model, stats)
    model.to(device).eval()
    cfg = PreprocessConfig.from_dict(meta["preprocess"])
    # BatchNorm folded into the convolutions: the same eval-mode outputs, fewer passes over
    # the activations (inference only: a LoadedRun never trains)
    if fold_bn:
        fold_batchnorm(model.backbone, torch.zeros(1, model.config["in_chans"], cfg.size, cfg.size, device=device))
    if use_channels_last(device, None):
        # float32 inference: NHWC weights make oneDNN/cuDNN run every conv NHWC whatever the
        # input's layout, ~1.8x the images/s of NCHW for Lite0 on a 2-core CPU.
        model.to(memory_format=torch.channels_last)
    return LoadedRun(run_dir, model, meta, cfg, input_norm(name, cfg), device, run.calibration, profile)
