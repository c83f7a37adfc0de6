"""``h2a train``: one run of the training engine (also under torchrun).

Every flag comes from a declaration on ``TrainConfig`` / ``PreprocessConfig``, and
``cmd_train`` maps the parsed args back generically, so an option is written once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from h2a.cli.common import CliError, add_preprocess_options, preprocess_config_from_args
from h2a.settings import dist_env, get_settings
from h2a.engine.config import TRAIN_SIZE, TrainConfig, TrainingError
from h2a.engine.trainer import train
from h2a.options import add_arguments, values_from_args
from h2a.run import Run

# Training's own preprocessing default comes from TrainConfig's declaration (128 px).
TRAIN_PREPROCESS = {"size": TRAIN_SIZE}


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Flags from TrainConfig's declarations, plus --resume and the preprocessing flags."""
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="start or continue the run whose folder holds config.json (other options are ignored)")
    add_arguments(p, TrainConfig)
    add_preprocess_options(p, augmentation=True, defaults=TRAIN_PREPROCESS)


def train_config_from_args(args: argparse.Namespace):
    """A TrainConfig from parsed flags: declared defaults, then training's preprocessing size
    and the settings' device, then whatever was given."""
    values = values_from_args(TrainConfig, args)
    values.setdefault("device", get_settings().device)
    values["preprocess"] = preprocess_config_from_args(args, **TRAIN_PREPROCESS).to_dict()
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    main_rank = dist_env().is_main
    log = (lambda m: print(m, flush=True)) if main_rank else (lambda m: None)
    if args.resume:
        # The folder given wins over the "out" saved in config.json: a moved or copied run
        # is continued where it now is.
        run_dir = Path(args.resume).expanduser().resolve()
        saved = Run.at(run_dir).config
        if saved is None:
            raise CliError(f"{args.resume}: no config.json to resume from")
        cfg = TrainConfig.from_dict({**saved, "out": str(run_dir),
                                     "device": args.device or saved.get("device", "auto")})
        try:
            train(cfg, log=log)
        except (TrainingError, OSError, ValueError, RuntimeError) as exc:
            raise CliError(str(exc)) from exc
        return 0
    if not args.data or not args.out:
        raise CliError("--data and --out are required (or --resume RUN)")
    cfg = train_config_from_args(args)
    try:
        meta = train(cfg, log=log)
    except (TrainingError, OSError, ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    if main_rank and meta:
        from h2a.inference.tasks import get_task

        headline = get_task(cfg.task).headline(meta["metrics"])
        print(f"run {meta['name']} finished ({meta['stop_reason']}): {headline}; saved in {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a bone-age or sex model (also under torchrun)")
    add_train_options(p)
    p.set_defaults(func=cmd_train)
