"""Reference: H2A's hand-written EfficientNet-Lite0 trunk before timm (copied verbatim).

Kept only for tests: the Lite0 remap equivalence (timm's tf_efficientnet_lite0 with the
remapped package weights must match it) and the hand-run A/B training-speed check.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
