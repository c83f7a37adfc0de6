"""The ``h2a`` / ``python -m h2a`` command line: the same core functions the pages call.

One sub-module per command group, each with a ``register(sub)`` that adds its parsers;
they share only ``h2a.cli.common``, so there are no import cycles. Expected failures (a
bad folder, a bad option) print one clear line to stderr and exit with 2; progress goes
to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import sys

from h2a import RESEARCH_NOTE, __version__
from h2a.cli import (adapt, calibrate, cluster, data, evaluate, export, jobs, models, predict, robustness, serve,
                     study, train)
from h2a.cli.common import CliError

COMMAND_GROUPS = (data, train, calibrate, adapt, evaluate, robustness, predict, models, cluster, jobs, study, serve,
                  export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="h2a",
        description=f"H2A (Hand-to-Age) {__version__}: pediatric hand radiographs and bone age. {RESEARCH_NOTE}",
    )
    parser.add_argument("--version", action="version", version=f"h2a {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"h2a {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"h2a {args.command}: interrupted", file=sys.stderr)
        return 130
