"""What every CLI command shares: the user-facing error, JSON output, dataset loading and
the preprocessing options (cache, train and cluster build a PreprocessConfig the same way)."""

from __future__ import annotations

import argparse
import json
import sys


class CliError(Exception):
    """An expected, user-facing failure: printed as one line, exit code 2."""


def print_json(obj: object) -> None:
    """One JSON document on stdout; NaN is refused so the output is always valid JSON."""
    json.dump(obj, sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def load_data(data: str):
    """The dataset, or a CliError whose one line says why the folder is unusable."""
    from h2a.data.datasets import DatasetError, load_dataset

    try:
        return load_dataset(data)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc


def add_preprocess_options(p: argparse.ArgumentParser) -> None:
    """Options that build a PreprocessConfig; shared by cache, train and cluster."""
    g = p.add_argument_group("preprocessing")
    g.add_argument("--config", help="name of a saved preprocessing config (overrides the options below)")
    g.add_argument("--image-size", type=int, default=None, help="output side in pixels")
    g.add_argument("--resize", choices=["squash", "pad", "crop"], default=None)
    g.add_argument("--contrast", choices=["none", "hist_eq", "clahe"], default=None)
    g.add_argument("--clahe-clip", type=float, default=None)
    g.add_argument("--clahe-grid", type=int, default=None)
    g.add_argument("--normalize", choices=["imagenet", "per_image"], default=None)


def preprocess_config_from_args(args: argparse.Namespace, **defaults):
    from h2a.data.preprocess import PreprocessConfig, load_config

    if getattr(args, "config", None):
        try:
            return load_config(args.config)
        except (FileNotFoundError, ValueError) as exc:
            raise CliError(f"preprocessing config {args.config!r}: {exc}") from exc
    values = dict(defaults)
    for field, attr in (("size", "image_size"), ("resize", "resize"), ("contrast", "contrast"),
                        ("clahe_clip", "clahe_clip"), ("clahe_grid", "clahe_grid"), ("normalize", "normalize")):
        value = getattr(args, attr, None)
        if value is not None:
            values[field] = value
    try:
        cfg = PreprocessConfig(**values)
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise CliError(f"preprocessing: {exc}") from exc
    return cfg
