"""Fine-tuning knobs that act on a built model: freezing, BatchNorm momentum, stochastic depth.

They are training-time settings, not architecture, so they are applied after
``create_model`` and never saved in ``model.config``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["backbone_units", "freeze_first", "set_bn_momentum", "set_drop_path"]


def backbone_units(model: nn.Module) -> list[nn.Module]:
    """The backbone as an ordered list of trainable units (stem, each block, head).

    timm trunks use timm's own fine-grained grouping (``group_matcher(coarse=False)``);
    hand-written trunks open containers of blocks and skip parameter-free layers.
    """
    trunk = model.backbone
    inner = getattr(trunk, "model", None)
    if inner is not None and hasattr(inner, "group_matcher"):
        from timm.models import group_modules

        groups = group_modules(inner, inner.group_matcher(coarse=False))
        return [nn.ModuleList(inner.get_submodule(n) for n in groups[g]) for g in sorted(groups)]

    def has_conv(m: nn.Module) -> bool:
        return any(isinstance(x, nn.Conv2d) for x in m.modules())

    units: list[nn.Module] = []
    for child in trunk.children():
        kids = list(child.children())
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and sum(has_conv(c) for c in kids) >= 2:
            units.extend(c for c in kids if has_conv(c))
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
    """Set every BatchNorm's running-stat momentum (timm's BatchNormAct2d too); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.momentum = momentum
    return len(layers)


def set_drop_path(model: nn.Module, rate: float) -> int:
    """Stochastic depth: ``rate`` at the deepest block, scaled down towards the first as the
    architecture's own schedule says (each timm DropPath keeps its share in ``drop_frac``).

    Eval ignores it. Returns how many DropPath layers took it (0: no stochastic depth).
    """
    from timm.layers import DropPath

    layers = [m for m in model.modules() if isinstance(m, DropPath)]
    for m in layers:
        m.drop_prob = float(rate) * float(getattr(m, "drop_frac", 1.0))
    return len(layers)
