"""What ``h2a cluster`` and ``h2a jobs start`` share: the pretrained backbone, the
clustering flags (built from ``ClusterConfig``'s declarations) and the preprocessing a
pretrained embedding uses, so the two commands cannot drift from each other, from the
Clusters page or from the background job.

Like ``h2a.cli.common`` it imports only light modules (``ClusterConfig`` is standard
library plus ``h2a.options``), so building the parser loads neither torch nor scikit-learn.
"""

from __future__ import annotations

import argparse

from h2a.analysis.cluster_config import PRETRAINED_ARCH, PRETRAINED_PREPROCESS, ClusterConfig
from h2a.cli.common import CliError, add_preprocess_options, preprocess_config_from_args, preprocess_values
from h2a.options import add_arguments, values_from_args


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """--arch, one flag per ClusterConfig field (a 'clustering' group) and the preprocessing flags."""
    p.add_argument("--arch", default=PRETRAINED_ARCH,
                   help=f"architecture of the pretrained backbone (default: {PRETRAINED_ARCH})")
    add_arguments(p, ClusterConfig)
    add_preprocess_options(p, defaults=PRETRAINED_PREPROCESS)


def cluster_config_from_args(args: argparse.Namespace) -> ClusterConfig:
    """The declared defaults, then the flags given."""
    try:
        return ClusterConfig(**values_from_args(ClusterConfig, args))
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def embedding_preprocess_from_args(args: argparse.Namespace):
    """The preprocessing to embed with: the one given (--config or flags); else a run's own
    (None) for --model; else the pretrained default (PRETRAINED_PREPROCESS)."""
    explicit = getattr(args, "config", None) or preprocess_values(args)
    if explicit or not getattr(args, "model", None):
        return preprocess_config_from_args(args, **PRETRAINED_PREPROCESS)
    return None
