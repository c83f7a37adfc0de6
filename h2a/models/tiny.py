"""``tiny_cnn``: four conv-BN-ReLU stages, the fast model of tests and demos (no weights)."""

from __future__ import annotations

from torch import nn

from h2a.models.heads import Backbone
from h2a.models._registry import HALF, ModelCfg, register_model, scaled_channels
from h2a.models.weights import PretrainedWeightsUnavailable

__all__ = ["tiny_cnn"]

TINY_CFG = ModelCfg(
    description="Tiny 4-stage CNN (~0.1M trunk parameters): fast CPU tests and demo runs.",
    default_size=128, num_features=128, mean=HALF, std=HALF, width_scalable=True, pretrained="none",
)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@register_model(cfg=TINY_CFG)
def tiny_cnn(*, pretrained: bool = False, in_chans: int = 1, width_mult: float = 1.0,
             weights: str | None = None) -> Backbone:
    """Four conv-BN-ReLU stages (~100k trunk parameters) for fast CPU tests and demos."""
    if pretrained:
        raise PretrainedWeightsUnavailable("tiny_cnn has no pretrained weights; train it with --no-pretrained.")
    widths = [scaled_channels(c, width_mult) for c in (16, 32, 64, 128)]
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
