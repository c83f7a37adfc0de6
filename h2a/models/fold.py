"""Fold BatchNorm into the preceding convolution for inference (one pass over each
activation instead of two; ~the same eval outputs)."""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor, nn

__all__ = ["fold_batchnorm"]


def _after_fold(bn: nn.Module) -> nn.Module:
    """What replaces a folded BatchNorm: nothing, or for timm's BatchNormAct2d (BN, then
    its drop and activation) the drop and activation, which folding must keep."""
    act = getattr(bn, "act", None)
    if isinstance(act, nn.Module):
        drop = getattr(bn, "drop", None)
        parts = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
        return parts[0] if len(parts) == 1 else (nn.Sequential(*parts) if parts else nn.Identity())
    return nn.Identity()


@torch.no_grad()
def fold_batchnorm(trunk: nn.Module, example: Tensor) -> int:
    """Fold every BatchNorm that reads a convolution's output into that convolution.

    For inference only: the folded trunk computes the eval-mode result with one pass over
    each activation instead of two, but can no longer train (its BatchNorms are gone).
    Pairs are found by running ``example`` through ``trunk`` and matching the tensor a
    BatchNorm reads to the tensor a convolution wrote, so any architecture (timm's
    included) folds without a per-architecture list. Returns how many were folded.
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
        setattr(parent, name, _after_fold(bn))
        folded += 1
    return folded
