"""``h2a train``: one run of the training engine (also under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from h2a.cli.common import CliError, add_preprocess_options, preprocess_config_from_args
from h2a.settings import dist_env, get_settings


def add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset folder")
    p.add_argument("--task", choices=["boneage", "sex"], default="boneage")
    p.add_argument("--out", help="run folder, e.g. models/NAME (resumes if it holds an unfinished run)")
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="start or continue the run whose folder holds config.json (other options are ignored)")
    p.add_argument("--arch", default="efficientnet_lite0", help="model name (see `python -m h2a models`)")
    p.add_argument("--pretrained", dest="pretrained", action="store_true", default=True,
                   help="start from ImageNet weights (default)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    p.add_argument("--width-mult", type=float, default=1.0, help="channel width multiplier (inception_v3, tiny_cnn)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the regression/classification head")
    p.add_argument("--drop-path", type=float, default=0.2, metavar="RATE",
                   help="stochastic depth at the last trunk block, scaled down to 0 at the first "
                        "(EfficientNet-Lite0; default 0.2)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN", help="stop after this many minutes")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default="adamw")
    p.add_argument("--scheduler", choices=["cosine", "onecycle", "step", "exponential", "plateau", "cyclic", "none"],
                   default="cosine")
    p.add_argument("--loss", choices=["l1", "mse", "huber"], default="l1")
    p.add_argument("--no-sex", dest="use_sex", action="store_false", default=True,
                   help="bone age from the image alone (no sex input branch)")
    p.add_argument("--init-from", default=None, metavar="RUN", help="warm start from an earlier run's weights")
    p.add_argument("--freeze", type=int, default=0, metavar="N", help="freeze the first N backbone blocks")
    p.add_argument("--split", choices=["stratified", "dataset"], default="stratified",
                   help="stratified sex x age split, or the folder's own train/validation CSVs")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--holdout-fraction", type=float, default=0.0,
                   help="share set aside first and never trained or tuned on (evaluate with --split holdout)")
    p.add_argument("--patience", type=int, default=0, help="early stopping patience in epochs (0 = off)")
    p.add_argument("--bn-momentum", type=float, default=0.1, metavar="M",
                   help="BatchNorm running-stat momentum while training (default 0.1)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights (e.g. 0.998)")
    p.add_argument("--progressive-from", type=int, default=None, metavar="PX",
                   help="progressive resizing: train batches start at PX and grow in 16 px steps to the image "
                        "size, used for the last 30%% of the run (more epochs in a time budget)")
    p.add_argument("--max-train-images", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="autocast: auto = bf16 on GPU only; bf16 also on CPUs with AMX/AVX512-BF16")
    add_preprocess_options(p)
    g = p.add_argument_group("augmentation")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=None)
    g.add_argument("--shift", type=float, default=None)
    g.add_argument("--rotation", type=float, default=None)
    g.add_argument("--zoom", type=float, default=None)


def cmd_train(args: argparse.Namespace) -> int:
    from h2a.engine.config import TrainConfig, TrainingError
    from h2a.engine.trainer import train

    main_rank = dist_env().is_main
    log = (lambda m: print(m, flush=True)) if main_rank else (lambda m: None)
    if args.resume:
        from h2a.engine.runs import CONFIG, read_json

        saved = read_json(Path(args.resume) / CONFIG)
        if saved is None:
            raise CliError(f"{args.resume}: no config.json to resume from")
        cfg = TrainConfig.from_dict({**saved, "out": str(Path(args.resume)),
                                     "device": args.device or saved.get("device", "auto")})
        try:
            train(cfg, log=log)
        except (TrainingError, FileNotFoundError, ValueError, RuntimeError) as exc:
            raise CliError(str(exc)) from exc
        return 0
    if not args.data or not args.out:
        raise CliError("--data and --out are required (or --resume RUN)")
    pcfg = preprocess_config_from_args(args, size=128)
    aug = {k: getattr(args, k) for k in ("flip", "shift", "rotation", "zoom") if getattr(args, k) is not None}
    if aug:
        from h2a.data.preprocess import PreprocessConfig

        pcfg = PreprocessConfig.from_dict({**pcfg.to_dict(), **aug})
    cfg = TrainConfig(
        data=args.data, out=args.out, task=args.task, arch=args.arch, pretrained=args.pretrained,
        use_sex=args.use_sex and args.task == "boneage", width_mult=args.width_mult, dropout=args.dropout,
        drop_path=args.drop_path, preprocess=pcfg.to_dict(),
        epochs=args.epochs, time_budget_min=args.time_budget, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, optimizer=args.optimizer, scheduler=args.scheduler, loss=args.loss,
        init_from=args.init_from, freeze=args.freeze, split=args.split, val_fraction=args.val_fraction,
        holdout_fraction=args.holdout_fraction, patience=args.patience, seed=args.seed, workers=args.workers,
        device=args.device or get_settings().device, amp=args.amp, ema=args.ema, bn_momentum=args.bn_momentum,
        progressive_from=args.progressive_from, max_train_images=args.max_train_images,
    )
    try:
        meta = train(cfg, log=log)
    except (TrainingError, FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    if main_rank and meta:
        m = meta["metrics"]
        headline = (f"validation MAE {m['mae']:.2f} months (predicting the mean: {m['mae_baseline_mean']:.2f})"
                    if cfg.task == "boneage" else
                    f"validation AUC {m['auc']:.3f}" if m["auc"] is not None else "validation AUC n/a (one sex only)")
        print(f"run {meta['name']} finished ({meta['stop_reason']}): {headline}; saved in {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a bone-age or sex model (also under torchrun)")
    add_train_options(p)
    p.set_defaults(func=cmd_train)
