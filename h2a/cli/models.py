"""``h2a models``: the architectures a run can use."""

from __future__ import annotations

import argparse


def cmd_models(args: argparse.Namespace) -> int:
    from h2a.models import list_models, model_info

    for name in list_models():
        info = model_info(name)
        print(f"{name:<20} {info.description} (default {info.default_size} px; "
              f"pretrained {'available' if info.pretrained_available else 'not on disk'})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model architectures")
    p.set_defaults(func=cmd_models)
