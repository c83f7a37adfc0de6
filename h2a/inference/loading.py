"""Loading a finished run as an inference-only model with everything needed to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from h2a.data.preprocess import PreprocessConfig
from h2a.data.transforms import input_norm
from h2a.device import use_channels_last
from h2a.engine.runs import METADATA, MODEL, read_json, safe_load
from h2a.engine.tasks import Task, task_of_run
from h2a.inference.calibration import measured_coverage, read_calibration
from h2a.inference.conformal import MondrianConformal, NormalisedConformal, Procedure, conformal_from_dict
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

    @property
    def conformal(self) -> MondrianConformal | NormalisedConformal | None:
        """The bone-age run's conformal interval calibration, or None."""
        cal = self.calibration or {}
        return conformal_from_dict(cal["interval"]) if "interval" in cal else None

    @property
    def calibrated_procedure(self) -> Procedure | None:
        """The prediction procedure the calibration's residuals or logits came from."""
        return Procedure.from_dict(self.calibration["procedure"]) if self.calibration else None

    def measured_coverage(self) -> dict | None:
        """The interval's measured coverage and where it was measured (see calibration.measured_coverage)."""
        return measured_coverage(self.path, self.calibration)


def load_run(run_dir: str | Path, device: torch.device | None = None, *, fold_bn: bool = True) -> LoadedRun:
    """Rebuild the architecture from metadata.json and load model.pt (weights only).

    ``fold_bn=False`` keeps the BatchNorms (only bench/bench_inference.py wants that).
    """
    run_dir = Path(run_dir)
    meta = read_json(run_dir / METADATA)
    if meta is None or not (run_dir / MODEL).exists():
        raise FileNotFoundError(f"{run_dir.name}: not a finished run (no metadata.json / model.pt yet)")
    device = device or torch.device("cpu")
    kwargs = dict(meta["model"])
    name = kwargs.pop("name")
    model = create_model(name, pretrained=False, **kwargs)
    model.load_state_dict(safe_load(run_dir / MODEL))
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
    return LoadedRun(run_dir, model, meta, cfg, input_norm(name, cfg), device, read_calibration(run_dir))
