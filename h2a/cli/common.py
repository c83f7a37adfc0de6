"""What every CLI command shares: the user-facing error, JSON output, dataset loading and
the preprocessing options (cache, train and cluster build a PreprocessConfig the same way)."""

from __future__ import annotations

import argparse
import json
import sys

from h2a.options import add_arguments, declarations, values_from_args
from h2a.data.datasets import DatasetError, load_dataset
from h2a.data.preprocess import PreprocessConfig, load_config


class CliError(Exception):
    """An expected, user-facing failure: printed as one line, exit code 2."""


def print_json(obj: object) -> None:
    """One JSON document on stdout; NaN is refused so the output is always valid JSON."""
    json.dump(obj, sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def load_data(data: str):
    """The dataset, or a CliError whose one line says why the folder is unusable."""
    try:
        return load_dataset(data)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc


def add_preprocess_options(p: argparse.ArgumentParser, augmentation: bool = False,
                           defaults: dict | None = None) -> None:
    """Flags built from PreprocessConfig's declarations; shared by cache, train and cluster.

    Augmentation flags only matter to training, so only train asks for them; ``defaults``
    are the command's own (shown in --help; pass the same to preprocess_config_from_args).
    """
    g = p.add_argument_group("preprocessing")
    g.add_argument("--config", metavar="NAME",
                   help="name of a saved preprocessing config (overrides the options below)")
    add_arguments(p, PreprocessConfig, groups=["preprocessing"], into=g, defaults=defaults)
    if augmentation:
        add_arguments(p, PreprocessConfig, groups=["augmentation"])


def preprocess_values(args: argparse.Namespace) -> dict:
    """The preprocessing options given on the command line, by field name (empty: none)."""
    return values_from_args(PreprocessConfig, args)


def preprocess_config_from_args(args: argparse.Namespace, **defaults):
    """--config NAME, else the declared defaults, then ``defaults``, then the given flags.

    Augmentation flags given with --config still apply (they never change the cache).
    """
    given = preprocess_values(args)
    if getattr(args, "config", None):
        try:
            base = load_config(args.config).to_dict()
        except (FileNotFoundError, ValueError) as exc:
            raise CliError(f"preprocessing config {args.config!r}: {exc}") from exc
        aug_names = {d.name for d in declarations(PreprocessConfig) if d.opt.group == "augmentation"}
        aug = {k: v for k, v in given.items() if k in aug_names}
        values = {**base, **aug}
    else:
        values = {**defaults, **given}
    try:
        return PreprocessConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise CliError(f"preprocessing: {exc}") from exc


def add_procedure_options(p: argparse.ArgumentParser, *, views_default: int | None, views_help: str) -> None:
    """--tta / --tta-views: how predictions are averaged. One definition for evaluate and
    calibrate, whose procedures must match for an interval's coverage to hold."""
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--tta-views", type=int, default=views_default, metavar="N", help=views_help)
