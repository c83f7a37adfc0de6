"""A run's configuration: every training option, declared once, saved as config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from h2a.data.preprocess import PreprocessConfig

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "onecycle", "step", "exponential", "plateau", "cyclic", "none")
LOSSES = ("l1", "mse", "huber")
# A loss this many times the first batch's (median of the last three batches) is divergence.
DIVERGENCE_FACTOR = 100.0


class TrainingError(RuntimeError):
    """A run cannot start or continue; the message says why in plain words."""


class TrainingDiverged(TrainingError):
    """Loss became NaN/inf or exploded: the run stops instead of burning time."""


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as config.json and re-read on resume."""

    data: str
    out: str
    task: str = "boneage"
    arch: str = "efficientnet_lite0"
    pretrained: bool = True
    use_sex: bool = True
    width_mult: float = 1.0
    dropout: float = 0.2
    drop_path: float = 0.2  # stochastic depth at the last trunk block (EfficientNet-Lite0)
    preprocess: dict = field(default_factory=lambda: PreprocessConfig(size=128).to_dict())
    epochs: int = 10
    time_budget_min: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    loss: str = "l1"
    init_from: str | None = None
    freeze: int = 0
    split: str = "stratified"  # or "dataset": the folder's own train/validation CSVs
    val_fraction: float = 0.2
    holdout_fraction: float = 0.0  # set aside before anything else: never trained or tuned on
    patience: int = 0  # early stopping after this many epochs without improvement (0 = off)
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: str = "auto"  # "auto" (bf16 on GPU), "bf16" (also on CPU), "off"
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off)
    # BatchNorm running-stat momentum while training. Lite0 ships TF's 0.01, which leaves
    # the running stats (used at validation) ImageNet's for the first few hundred steps of
    # a short fine-tune on radiographs; 0.1 (PyTorch's default) tracks the new domain.
    bn_momentum: float = 0.1
    # Progressive resizing: train batches start at this size (px) and grow in 16 px steps
    # to the preprocessing size, which the last 30% of the run uses. Small early batches
    # are cheaper (Lite0 on 2 CPU cores: 96 px epochs ~0.65x the time of 128 px).
    progressive_from: int | None = None
    max_train_images: int | None = None

    def validate(self) -> None:
        if self.task not in ("boneage", "sex"):
            raise TrainingError(f"task must be 'boneage' or 'sex', not {self.task!r}")
        if self.task == "sex":
            self.use_sex = False
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("scheduler", self.scheduler, SCHEDULERS), ("loss", self.loss, LOSSES),
                                     ("split", self.split, ("stratified", "dataset")),
                                     ("amp", self.amp, ("auto", "bf16", "off"))):
            if value not in allowed:
                raise TrainingError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainingError("epochs and batch size must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"learning rate must be a positive number, not {self.lr}")
        if not 0.0 <= self.ema < 1.0:
            raise TrainingError(f"ema decay must be in [0, 1), not {self.ema}")
        if not 0.0 <= self.drop_path < 1.0:
            raise TrainingError(f"drop_path must be in [0, 1), not {self.drop_path}")
        if not 0.0 < self.bn_momentum <= 1.0:
            raise TrainingError(f"bn_momentum must be in (0, 1], not {self.bn_momentum}")
        if not 0 <= self.holdout_fraction < 0.9 or not 0 < self.val_fraction < 0.9:
            raise TrainingError("val_fraction must be in (0, 0.9) and holdout_fraction in [0, 0.9)")
        try:
            pcfg = PreprocessConfig.from_dict(self.preprocess)
            pcfg.validate()
        except ValueError as exc:
            raise TrainingError(f"preprocessing: {exc}") from exc
        if self.progressive_from is not None and not 32 <= self.progressive_from < pcfg.size:
            raise TrainingError(f"progressive resizing must start between 32 px and the image size "
                                f"({pcfg.size} px), not at {self.progressive_from} px")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
