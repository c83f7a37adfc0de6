"""A run's configuration: every training option, declared once, saved as config.json.

Each field carries its declaration (``h2a.options.option``: help, choices, range, CLI
flag, form label), from which the CLI parser, the args -> config mapping, the per-field
checks and the Training page form are built. ``validate`` keeps only the rules that
join several fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from h2a import TASKS
from h2a.data.preprocess import PreprocessConfig
from h2a.options import option, problems
from h2a.run import Run, check_run_name

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "onecycle", "step", "exponential", "plateau", "cyclic", "none")
LOSSES = ("l1", "mse", "huber")
SPLITS = ("stratified", "dataset")
AMP_MODES = ("auto", "bf16", "off")
# A loss this many times the first batch's (median of the last three batches) is divergence.
DIVERGENCE_FACTOR = 100.0


class TrainingError(RuntimeError):
    """A run cannot start or continue; the message says why in plain words."""


class TrainingDiverged(TrainingError):
    """Loss became NaN/inf or exploded: the run stops instead of burning time."""


TRAIN_SIZE = 128  # training's input size: suits a CPU (PreprocessConfig's 256 is for caches and previews)


def default_train_preprocess() -> dict:
    """Training's preprocessing default: the declared PreprocessConfig at ``TRAIN_SIZE``. The CLI,
    the training form and TrainConfig all start from this one place."""
    return PreprocessConfig(size=TRAIN_SIZE).to_dict()


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as config.json and re-read on resume."""

    data: str = option(help="dataset folder", form=False)
    out: str = option(help="run folder, e.g. models/NAME (resumes if it holds an unfinished run)", form=False)
    task: str = option("boneage", choices=TASKS, help="what the model predicts: bone age (months) or sex",
                       form=False)
    arch: str = option("efficientnet_lite0", help="model name (see `h2a models`)", label="Architecture",
                       form=False)
    pretrained: bool = option(True, cli="--pretrained", label="ImageNet weights", applies="pretrained_available",
                              help="start from ImageNet weights")
    weights: str | None = option(None, metavar="FILE", form=False,
                                 help="ImageNet weights file (.pth or .safetensors) for --arch; "
                                      "default workspace/weights/<arch>.pth")
    use_sex: bool = option(True, negative="--no-sex", label="Sex as an input",
                           help="feed sex to the model as a second input (bone age only); "
                                "off: bone age from the image alone")
    width_mult: float = option(1.0, minimum=0.0, exclusive_min=True, maximum=4.0, label="Width multiplier",
                               applies="width_scalable", form={"step": 0.25, "format": "%.2f"},
                               help="channel width multiplier (width-scalable architectures only)")
    dropout: float = option(0.2, minimum=0.0, maximum=1.0, exclusive_max=True, label="Dropout",
                            form={"step": 0.05, "format": "%.2f"},
                            help="dropout before the regression/classification head")
    drop_path: float = option(0.2, minimum=0.0, maximum=1.0, exclusive_max=True, metavar="RATE",
                              label="Stochastic depth", applies="has_drop_path",
                              form={"step": 0.05, "format": "%.2f", "max": 0.9},
                              help="share of samples that skip the last trunk block, scaled down to 0 at the "
                                   "first; lower fits faster in a short run")
    preprocess: dict = option(default_factory=default_train_preprocess, cli=False, form=False,
                              help="the preprocessing config (PreprocessConfig as a mapping)")
    epochs: int = option(10, minimum=1, label="Epochs", form={"max": 500}, help="passes over the training set")
    # Stored in minutes; the flag keeps its short historical name.
    time_budget_min: float | None = option(None, cli="--time-budget", metavar="MIN", minimum=0.0,
                                           exclusive_min=True, label="Time budget", unit="min, 0 = none",
                                           form={"zero_is_none": True, "max": 1440.0, "step": 1.0},
                                           help="stop after this many minutes")
    batch_size: int = option(32, minimum=1, label="Batch size",
                             form={"widget": "select_slider", "values": [4, 8, 16, 32, 64, 128, 256]},
                             help="images per optimisation step")
    lr: float = option(1e-3, minimum=0.0, exclusive_min=True, label="Learning rate",
                       form={"min": 1e-6, "max": 1.0, "format": "%.5f"}, help="peak learning rate")
    weight_decay: float = option(1e-4, minimum=0.0, label="Weight decay", form={"format": "%.5f"},
                                 help="decoupled weight decay (AdamW) or L2 (Adam, SGD)")
    optimizer: str = option("adamw", choices=OPTIMIZERS, label="Optimizer", help="optimisation algorithm")
    scheduler: str = option("cosine", choices=SCHEDULERS, label="LR schedule", help="learning-rate schedule")
    loss: str = option("l1", choices=LOSSES, label="Loss",
                       help="bone-age regression loss; sex classification always uses binary cross-entropy")
    init_from: str | None = option(None, metavar="RUN", label="Warm start from",
                                   help="warm start from an earlier run's weights")
    freeze: int = option(0, minimum=0, metavar="N", label="Freeze first N blocks", form={"max": 20},
                         help="freeze the first N backbone blocks")
    split: str = option("stratified", choices=SPLITS, label="Validation split",
                        form={"labels": {"stratified": "stratified sex x age", "dataset": "the folder's own CSVs"}},
                        help="stratified sex x age split, or the folder's own train/validation CSVs")
    val_fraction: float = option(0.2, minimum=0.0, exclusive_min=True, maximum=0.9, exclusive_max=True,
                                 label="Validation share", form={"widget": "slider", "min": 0.05, "max": 0.5},
                                 help="share of the labelled images used for validation")
    holdout_fraction: float = option(0.0, minimum=0.0, maximum=0.9, exclusive_max=True,
                                     label="Held-out test share", form={"widget": "slider", "max": 0.5},
                                     help="share set aside first and never trained or tuned on "
                                          "(evaluate with --split holdout)")
    patience: int = option(0, minimum=0, label="Early stopping patience", form={"max": 100},
                           help="early stopping after this many epochs without improvement (0 = off)")
    seed: int = option(0, minimum=0, label="Seed", help="random seed of the split, initialisation and batches")
    split_seed: int | None = option(None, minimum=0, form=False,
                                    help="seed of the validation / held-out split alone (default: --seed), so "
                                         "runs with different seeds can hold out the same images")
    workers: int = option(2, minimum=0, form=False, help="DataLoader worker processes")
    device: str = option("auto", form=False, help="auto, cpu, cuda, cuda:N (default: the settings' device)")
    amp: str = option("auto", choices=AMP_MODES, label="Mixed precision",
                      help="autocast: auto = bf16 on a GPU and on CPUs with native bf16 (AMX / AVX512-BF16), "
                           "float32 on other CPUs; bf16 insists; off = float32")
    ema: float = option(0.0, minimum=0.0, maximum=1.0, exclusive_max=True, metavar="DECAY", label="EMA decay",
                        form={"format": "%.4f"},
                        help="validate and save an exponential moving average of the weights, e.g. 0.998 "
                             "(0 = off)")
    # Lite0 was trained in TensorFlow with 0.01, which leaves the running stats (used at
    # validation) ImageNet's for the first few hundred steps of a short fine-tune on
    # radiographs; 0.1 (PyTorch's default) tracks the new domain.
    bn_momentum: float = option(0.1, minimum=0.0, exclusive_min=True, maximum=1.0, metavar="M",
                                label="BatchNorm momentum", form={"min": 0.001, "format": "%.3f"},
                                help="BatchNorm running-stat momentum while training; 0.1 lets the running "
                                     "statistics follow radiographs quickly (TensorFlow's 0.01 lags in a short fine-tune)")
    # Small early batches are cheaper (Lite0 on 2 CPU cores: 96 px epochs ~0.65x the time of 128 px).
    progressive_from: int | None = option(None, minimum=32, metavar="PX", label="Progressive resizing from",
                                          unit="px",
                                          form={"widget": "selectbox", "values": [None, 64, 96, 128, 192, 256, 384]},
                                          help="progressive resizing: train batches start at PX and grow in 16 px "
                                               "steps to the image size, used for the last 30% of the run "
                                               "(more epochs in a time budget)")
    max_train_images: int | None = option(None, minimum=1, form=False,
                                          help="train on at most this many images (quick experiments)")
    exclude_ids: str | None = option(None, metavar="FILE_OR_DIR", form=False,
                                     help="never train on these image ids: a dataset folder (its ids), a CSV "
                                          "with an id column, or a text file with one id per line; the "
                                          "validation and held-out splits stay as they would be without it")

    def validate(self) -> None:
        """Per-field checks come from the declarations; the rules below join fields."""
        if self.task == "sex":
            self.use_sex = False
        found = problems(self)
        if self.out and not Run.at(self.out).has_config:  # a new run; one started before the rule keeps its name
            try:
                check_run_name(Path(self.out).name)
            except ValueError as exc:
                found.append(str(exc))
        if found:
            raise TrainingError("; ".join(found))
        if not self.holdout_fraction + self.val_fraction < 0.95:
            raise TrainingError("val_fraction and holdout_fraction together leave too few images to train on "
                                f"({self.val_fraction} + {self.holdout_fraction})")
        try:
            pcfg = PreprocessConfig.from_dict(self.preprocess)
            pcfg.validate()
        except ValueError as exc:
            raise TrainingError(f"preprocessing: {exc}") from exc
        if self.progressive_from is not None and not self.progressive_from < pcfg.size:
            raise TrainingError(f"progressive resizing must start between 32 px and the image size "
                                f"({pcfg.size} px), not at {self.progressive_from} px")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
