"""The bottom of ``h2a.models``: what builders register with (timm's ``_registry.py``).

Kept apart from ``registry`` (create_model, model_info) so that builder modules
(``timm_backbones``, ``inception``, ``tiny``) import only this, and ``registry`` imports
them: the package's imports run one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from h2a.models.heads import Backbone

__all__ = ["HALF", "IMAGENET_MEAN", "IMAGENET_STD", "ModelCfg", "check_width", "register_model", "scaled_channels"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite and Inception weights were trained on inputs scaled to [-1, 1].
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelCfg:
    """Metadata of an H2A builder (``timm_name`` borrows mean/std from timm's config)."""

    description: str
    default_size: int
    num_features: int
    min_size: int = 32
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    width_scalable: bool = False
    has_drop_path: bool = False
    # "file" (--weights/workspace), "timm" (those, else timm's hub), "package" (bundled) or "none"
    pretrained: str = "file"
    timm_name: str | None = None


Builder = Callable[..., Backbone]
_MODELS: dict[str, Builder] = {}
_CFGS: dict[str, ModelCfg] = {}


def register_model(fn: Builder | None = None, *, cfg: ModelCfg | None = None) -> Builder | Callable[[Builder], Builder]:
    """Register a builder under its function name (timm's ``@register_model``).

    A builder takes keyword arguments ``pretrained``, ``in_chans``, ``width_mult`` and
    ``weights`` (a file or None) and returns a ``Backbone``. Use bare or with ``cfg=``.
    """
    def add(f: Builder) -> Builder:
        name = f.__name__
        if name in _MODELS and _MODELS[name] is not f:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = f
        if cfg is not None:
            _CFGS[name] = cfg
        return f

    return add(fn) if fn is not None else add


def check_width(name: str, width_mult: float) -> None:
    """Refuse width_mult != 1 for fixed-width architectures, naming those that scale."""
    if width_mult != 1.0:
        scalable = [n for n, cfg in sorted(_CFGS.items()) if cfg.width_scalable]
        raise ValueError(f"{name} has a fixed width (width_mult={width_mult} asked); "
                         f"width_mult is supported by {', '.join(scalable)}")


def scaled_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Channel count scaled by width_mult, rounded to a multiple of ``divisor``."""
    if width_mult == 1.0:
        return channels
    v = max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
    if v < 0.9 * channels * width_mult:
        v += divisor
    return v
