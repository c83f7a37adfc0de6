"""``h2a models``: the architectures a run can use (H2A's own, curated timm, or any timm name)."""

from __future__ import annotations

import argparse
from h2a.models import PretrainedWeightsUnavailable, list_models, list_timm_models, model_info


def cmd_models(args: argparse.Namespace) -> int:
    if args.all or args.filter:
        names = list_timm_models(args.filter or "")
        print("\n".join(names))
        print(f"\n{len(names)} timm architectures; any of them works as --arch.")
        return 0
    for name in list_models():
        try:
            info = model_info(name)
        except (ValueError, RuntimeError, PretrainedWeightsUnavailable) as exc:  # a broken timm entry
            print(f"{name:<24} (unavailable: {exc})")
            continue
        if info.pretrained_available:
            weights = f"ImageNet weights: {info.pretrained_source}"
        elif info.needs_weights_file:
            weights = ("ImageNet weights: " + ("timm hub when reachable, else " if info.source == "timm" else "")
                       + "a file (see below)")
        else:
            weights = "no pretrained weights"
        knobs = ", ".join(k for k, on in (("width-mult", info.width_scalable),
                                          ("drop-path", info.has_drop_path)) if on)
        print(f"{name:<24} [{info.source}] {info.description}\n{'':<24} default {info.default_size} px, "
              f"{info.num_features} features{'; ' + knobs if knobs else ''}; {weights}")
    print("\nAny timm architecture name also works as --arch (`h2a models --all`, or "
          "`h2a models --filter 'convnext*'`).\nOffline, ImageNet weights for <arch> go in "
          "<workspace>/weights/<arch>.pth or .safetensors, or pass --weights FILE.")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model architectures")
    p.add_argument("--all", action="store_true", help="print every timm architecture name")
    p.add_argument("--filter", default="", metavar="PATTERN",
                   help="print the timm architecture names matching PATTERN (fnmatch, e.g. 'resnet*')")
    p.set_defaults(func=cmd_models)
