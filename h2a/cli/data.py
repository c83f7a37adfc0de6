"""Dataset commands: demo-data, stats, inspect, cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from h2a.cli.common import CliError, add_preprocess_options, load_data, preprocess_config_from_args, print_json
from h2a.progress import StderrProgress
from h2a.analysis.stats import compute_stats
from h2a.data.cache import CacheError, build_cache
from h2a.data.demo import generate_demo
from h2a.data.imageio import inspect


def cmd_demo_data(args: argparse.Namespace) -> int:
    out = generate_demo(Path(args.out), n=args.n, seed=args.seed, progress=StderrProgress("demo"))
    print(f"synthetic demo dataset ({args.n} images, seed {args.seed}) in {out}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    ds = load_data(args.data)
    result = compute_stats(ds, progress=None if args.json else StderrProgress("headers"))
    if args.json:
        print_json(result)
        return 0
    ba = result["boneage_months"]
    lines = [
        f"dataset   {result['dataset']}{'  (SYNTHETIC demo data)' if result['synthetic'] else ''}",
        f"rows      {result['n_rows']}  images {result['n_images']}  missing {result['n_missing_images']}"
        f"  unreadable {result['n_unreadable_images']}",
        f"sex       male {result['n_male']}  female {result['n_female']}",
        "splits    " + ", ".join(f"{k} {v}" for k, v in result["splits"].items()),
        "labels    " + ", ".join(f"{k} ({v})" for k, v in result["label_encodings"].items()),
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


def cmd_inspect(args: argparse.Namespace) -> int:
    results = [inspect(path, name=path) for path in args.files]
    if args.json:
        print_json(results if len(results) != 1 else results[0])
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


def cmd_cache(args: argparse.Namespace) -> int:
    ds = load_data(args.data)
    cfg = preprocess_config_from_args(args)
    try:
        cache = build_cache(ds, cfg, workers=args.workers, progress=StderrProgress("cache"), force=args.force)
    except CacheError as exc:  # disk full, a worker died: one line, not a traceback
        raise CliError(str(exc)) from exc
    n_bad = int((~cache.ok).sum())
    print(f"{len(cache)} images x {cfg.size}x{cfg.size} uint8 in {cache.path}"
          f"{' (reused)' if not cache.built_now else ''}; {n_bad} failed")
    info = cache.info
    if cache.built_now and info.get("images_per_s") is not None:
        print(f"built in {info.get('build_seconds', 0):.1f} s: {info['images_per_s']:.1f} images/s, "
              f"{info.get('mb_per_s', 0):.1f} MB/s read, {info.get('workers', '?')} workers")
    for ident, msg in list(cache.errors.items())[:20]:
        print(f"  {ident}: {msg}")
    return 0


def register(sub) -> None:
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
