"""The ``python -m h2a`` command line: the same core functions the pages call.

Each sub-command is a small function taking parsed args and returning an exit code.
Expected failures (a bad folder, a bad option) print one clear line to stderr and exit
with 2; progress goes to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from h2a import RESEARCH_NOTE, __version__
from h2a.progress import StderrProgress


class CliError(Exception):
    """An expected, user-facing failure: printed as one line, exit code 2."""


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def _load(data: str):
    from h2a.datasets import DatasetError, load_dataset

    try:
        return load_dataset(data)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc


# ---------------------------------------------------------------- demo-data

def cmd_demo_data(args: argparse.Namespace) -> int:
    from h2a.demo import generate_demo

    out = generate_demo(Path(args.out), n=args.n, seed=args.seed, progress=StderrProgress("demo"))
    print(f"synthetic demo dataset ({args.n} images, seed {args.seed}) in {out}")
    return 0


# ---------------------------------------------------------------- stats

def cmd_stats(args: argparse.Namespace) -> int:
    from h2a.stats import compute_stats

    ds = _load(args.data)
    result = compute_stats(ds, progress=None if args.json else StderrProgress("headers"))
    if args.json:
        _print_json(result)
        return 0
    ba = result["boneage_months"]
    lines = [
        f"dataset   {result['dataset']}{'  (SYNTHETIC demo data)' if result['synthetic'] else ''}",
        f"rows      {result['n_rows']}  images {result['n_images']}  missing {result['n_missing_images']}"
        f"  unreadable {result['n_unreadable_images']}",
        f"sex       male {result['n_male']}  female {result['n_female']}",
        "splits    " + ", ".join(f"{k} {v}" for k, v in result["splits"].items()),
    ]
    if ba["n"]:
        lines.append(f"bone age  mean {ba['mean']:.1f}  median {ba['median']:.0f}  range {ba['min']:.0f}-{ba['max']:.0f} months")
        for sex in ("male", "female"):
            s = result["by_sex"][sex]
            if s["n"]:
                lines.append(f"  {sex:<7} n {s['n']}  mean {s['mean']:.1f}  median {s['median']:.0f}")
    w, h = result["width"], result["height"]
    if w["n"]:
        lines.append(f"size      width {w['min']:.0f}-{w['max']:.0f} (median {w['median']:.0f}), height {h['min']:.0f}-{h['max']:.0f} (median {h['median']:.0f})")
    lines.append(f"problems  {len(result['problems'])}")
    for p in result["problems"][:20]:
        lines.append(f"  {p['item']}: {p['problem']}")
    if len(result["problems"]) > 20:
        lines.append(f"  ... and {len(result['problems']) - 20} more (use --json for all)")
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------- inspect

def cmd_inspect(args: argparse.Namespace) -> int:
    from h2a.imageio import inspect

    results = [inspect(path, name=path) for path in args.files]
    if args.json:
        _print_json(results if len(results) != 1 else results[0])
    else:
        for r in results:
            if r["ok"]:
                extra = ""
                if r.get("dicom"):
                    d = r["dicom"]
                    extra = (f"  sex={d.get('patient_sex')} birth={d.get('birth_date')} "
                             f"study={d.get('study_date')} age={d.get('patient_age')}")
                print(f"ok    {r['file']}: {r['format']} {r['width']}x{r['height']} "
                      f"{r['bit_depth']}-bit {r.get('photometric') or r.get('mode')}{extra}")
            else:
                print(f"error {r['error']}")
    return 0 if all(r["ok"] for r in results) else 1


# ---------------------------------------------------------------- cache

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
    from h2a.preprocess import PreprocessConfig, load_config

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


def cmd_cache(args: argparse.Namespace) -> int:
    from h2a.cache import build_cache

    ds = _load(args.data)
    cfg = preprocess_config_from_args(args)
    cache = build_cache(ds, cfg, workers=args.workers, progress=StderrProgress("cache"), force=args.force)
    n_bad = int((~cache.ok).sum())
    print(f"{len(cache)} images x {cfg.size}x{cfg.size} uint8 in {cache.path}"
          f"{' (reused)' if not cache.built_now else ''}; {n_bad} failed")
    for ident, msg in list(cache.errors.items())[:20]:
        print(f"  {ident}: {msg}")
    return 0


# ---------------------------------------------------------------- train / evaluate / predict

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
    from h2a.config import dist_env, get_settings
    from h2a.training import TrainConfig, TrainingError, train

    main_rank = dist_env().is_main
    log = (lambda m: print(m, flush=True)) if main_rank else (lambda m: None)
    if args.resume:
        from h2a.runs import CONFIG, read_json

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
        from h2a.preprocess import PreprocessConfig

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from h2a.evaluation import evaluate

    try:
        result = evaluate(args.model, args.data, split=args.split, flip_tta=args.tta, tta_views=args.tta_views,
                          progress=None if args.json else StderrProgress("evaluate"))
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    metrics = result.metrics
    if args.json:
        _print_json(metrics)
        return 0
    print(f"{metrics['task']} on {metrics['n']} images ({metrics['split']}) of {metrics['data']}")
    if metrics["task"] == "boneage":
        print(f"MAE {metrics['mae']:.2f} mo, RMSE {metrics['rmse']:.2f}, R2 {metrics['r2']:.3f}, "
              f"within 12 mo {100 * metrics['within_12_months']:.1f}%")
        print("MAE by sex: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics["mae_by_sex"].items()))
        print("MAE by age: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["mae_by_age_bin"].items()))
    else:
        print(f"AUC {metrics['auc']:.3f}, accuracy {metrics['accuracy']:.3f}, "
              f"balanced accuracy {metrics['balanced_accuracy']:.3f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from h2a.predict import predict_files

    try:
        results = predict_files(args.model, args.files, sex=args.sex, dob=args.dob, exam_date=args.exam_date,
                                age_months=args.age_months, tta=args.tta, cam=bool(args.report_dir),
                                report_dir=args.report_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        _print_json(results if len(results) != 1 else results[0])
    else:
        for r in results:
            if r.get("error"):
                print(f"error {r['file']}: {r['error']}")
            else:
                lo, hi = r["interval_months"]
                extra = f"  SDS {r['sds']:+.2f} ({r['classification']})" if r.get("sds") is not None else ""
                print(f"{r['file']}: bone age {r['bone_age_months']:.1f} months ({lo:.0f}-{hi:.0f}){extra}")
                for w in r.get("warnings", []):
                    print(f"  warning: {w}")
    return 0 if all(not r.get("error") for r in results) else 1


def cmd_models(args: argparse.Namespace) -> int:
    from h2a.models import list_models, model_info

    for name in list_models():
        info = model_info(name)
        print(f"{name:<20} {info.description} (default {info.default_size} px; "
              f"pretrained {'available' if info.pretrained_available else 'not on disk'})")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m h2a",
        description=f"H2A (Hand-to-Age) {__version__}: pediatric hand radiographs and bone age. {RESEARCH_NOTE}",
    )
    parser.add_argument("--version", action="version", version=f"h2a {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="generate the synthetic demo dataset")
    p.add_argument("--out", required=True, help="folder to write (Kaggle layout)")
    p.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("stats", help="population statistics of a dataset folder")
    p.add_argument("--data", required=True, help="dataset folder (holds the label CSV)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("inspect", help="header facts of image files, or why they cannot be read")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("cache", help="decode + preprocess a dataset once into the tensor cache")
    p.add_argument("--data", required=True)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--force", action="store_true", help="rebuild even if a cache exists")
    add_preprocess_options(p)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", help="train a bone-age or sex model (also under torchrun)")
    add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a trained run on a dataset")
    p.add_argument("--model", required=True, help="run folder or name")
    p.add_argument("--data", default=None, help="dataset folder (default: the run's own dataset)")
    p.add_argument("--split", choices=["all", "validation", "holdout"], default=None,
                   help="all labelled images (default for another folder) or the run's validation/holdout ids")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--tta-views", type=int, default=0, metavar="N",
                   help="also average N augmented copies (the run's own augmentation ranges)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="bone age for image files (PNG, JPEG, TIFF, DICOM)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--model", default=None, help="run folder or name (default: best validated bone-age run)")
    p.add_argument("--sex", choices=["male", "female"], default=None)
    p.add_argument("--dob", default=None, metavar="YYYY-MM-DD")
    p.add_argument("--exam-date", default=None, metavar="YYYY-MM-DD")
    p.add_argument("--age-months", type=float, default=None, help="chronological age at the exam")
    p.add_argument("--tta", type=int, default=8, metavar="N", help="test-time augmentations for the interval")
    p.add_argument("--report-dir", default=None, help="write a one-page PDF per file here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list the model architectures")
    p.set_defaults(func=cmd_models)

    from h2a.cli_cluster import add_cluster_parser  # imports h2a.cli: keep inside the function

    add_cluster_parser(sub)
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
