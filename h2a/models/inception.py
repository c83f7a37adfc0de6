"""The width-scaled Inception-v3 trunks of the seeds' width ablation (16BitNet / BoneAgeNet).

``inception_v3`` at ``width_mult=1`` is timm's ``inception_v3`` (built like every other
timm name: one grey channel, weights from ``--weights``/the workspace/timm's hub). This
hand-written trunk remains only because timm has no equivalent of the ablation: it
scales every branch by ``width_mult`` (0.25 or 0.5 give CPU-friendly trunks), which
timm's fixed-width model cannot do. At ``width_mult=1`` its module names and shapes match
torchvision's Inception3 and timm's inception_v3 (so runs saved when it also served width
1 load into timm's model). Inputs must be at least 75 px (as torchvision's); 299-500 px
is the 16BitNet/BoneAgeNet range. There are no ImageNet weights for widths other than 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from h2a.models.heads import Backbone
from h2a.models._registry import HALF, ModelCfg, register_model, scaled_channels
from h2a.models.timm_backbones import build_timm

__all__ = ["InceptionV3Trunk", "inception_v3"]


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
    """Inception-v3 without classifier or auxiliary head; channel widths scale by width_mult.

    The registry builds it for ``width_mult != 1`` only (width 1 is timm's inception_v3).
    """

    def __init__(self, in_chans: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return scaled_channels(n, width_mult)

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


INCEPTION_CFG = ModelCfg(
    description="Inception-v3 as in 16BitNet/BoneAgeNet, 22M trunk parameters: timm's inception_v3 at "
                "width 1, hand-written width-scaled trunks for the width ablation (width_mult != 1).",
    default_size=299, num_features=2048, min_size=75, mean=HALF, std=HALF, width_scalable=True,
    pretrained="timm", timm_name="inception_v3",
)


@register_model(cfg=INCEPTION_CFG)
def inception_v3(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0,
                 weights: str | None = None) -> Backbone:
    """Inception-v3: timm's at width_mult=1, the hand-written width-scaled trunk otherwise."""
    if width_mult == 1.0:
        # torchvision-derived files (timm's tv_in1k too) carry the auxiliary classifier
        return build_timm("inception_v3", pretrained=pretrained, in_chans=in_chans, weights=weights,
                          ignore=("AuxLogits.",), min_size=INCEPTION_CFG.min_size)
    if pretrained:
        raise ValueError(f"inception_v3 pretrained weights exist only for width_mult=1.0 "
                         f"(width_mult={width_mult} asked): train the narrowed trunk with --no-pretrained")
    trunk = InceptionV3Trunk(in_chans=in_chans, width_mult=width_mult)
    return Backbone(trunk, trunk.num_features, cam_target="Mixed_7c")
