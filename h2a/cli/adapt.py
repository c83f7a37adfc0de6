"""``h2a adapt``: a site profile for a run (``RUN/sites/SITE``), judged by cross-validation.

``h2a adapt --model RUN --data DIR --name SITE`` learns how one source's images differ
from the run's training images (``h2a.inference.sites.fit_site``); ``h2a predict --site``,
``h2a evaluate --site`` and the pages then apply it. ``h2a adapt --model RUN --list`` shows
a run's sites.
"""

from __future__ import annotations

import argparse

from h2a.cli.common import CliError, print_json
from h2a.progress import StderrProgress
from h2a.inference.site_profile import SiteError, list_sites, read_site
from h2a.inference.sites import FOLDS, REPEATS, fit_site
from h2a.run import resolve_run


def _f(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _print_report(info: dict) -> None:
    fitted = info["fitted_on"]
    print(f"site {info['name']} of run {info['run']}: {fitted['n_images']} "
          f"{'labelled' if fitted['labelled'] else 'unlabelled'} images of {fitted['data_name']} "
          f"({info['seconds']:.0f} s)")
    for part, p in info["parts"].items():
        print(f"  {part}: {'kept' if p['kept'] else 'left out'} ({p['why']})")
    rep = info.get("report") or {}
    if rep.get("unlabelled"):
        print(f"  mean estimate {rep['mean_estimate_before']:.1f} -> {rep['mean_estimate_after']:.1f} months "
              f"(shift {rep['mean_shift_months']:+.2f}); not judged: no labels")
    else:
        print(f"  {rep['how']}:")
        print("  variant                       MAE (SE)        bias    coverage  width   MAE vs none (95% CI)")
        for name, v in rep["variants"].items():
            d = rep["differences"].get(name)
            diff = f"{d['mae_difference']:+.2f} ({d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f})" if d else ""
            print(f"  {name:<28}  {_f(v['mae'])} ({_f(v['mae_se'])})  {_f(v['bias'], '+.2f'):>7}  "
                  f"{_f(v['coverage'], '.3f'):>8}  {_f(v['width_months'], '.1f'):>5}   {diff}")
    if info.get("auto"):
        print(f"  default for uploads: {info['auto']['why']}")


def cmd_adapt(args: argparse.Namespace) -> int:
    try:
        run = resolve_run(args.model)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    if args.list:
        sites = [read_site(run, s) for s in list_sites(run)]
        if args.json:
            print_json([s.info for s in sites])
        else:
            for s in sites:
                print(s.describe())
            if not sites:
                print(f"run {run.name} has no sites (fit one with h2a adapt --data DIR --name SITE)")
        return 0
    if not args.data or not args.name:
        raise CliError("--data and --name are required (or --list)")
    try:
        info = fit_site(run, args.data, args.name, unlabelled=args.unlabelled,
                        default_for_large=args.default_for_large, folds=args.folds, repeats=args.repeats,
                        progress=None if args.json else StderrProgress("adapt"))
    except (SiteError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print_json(info)
    else:
        _print_report(info)
    return 0


def register(sub) -> None:
    p = sub.add_parser("adapt", help="fit a site profile: adapt a bone-age run to images from one source")
    p.add_argument("--model", required=True, help="run folder or name")
    p.add_argument("--data", default=None, help="the site's images: RSNA layout (labelled) or a folder of images")
    p.add_argument("--name", default=None, help="site name (a folder name: letters, digits, _ - .)")
    p.add_argument("--unlabelled", action="store_true",
                   help="ignore labels: re-estimate only the normalisation statistics")
    p.add_argument("--default-for-large", action="store_true",
                   help="make this site the default for uploads much larger than the training images")
    p.add_argument("--folds", type=int, default=FOLDS, help=f"cross-validation folds (default {FOLDS})")
    p.add_argument("--repeats", type=int, default=REPEATS,
                   help=f"fold assignments averaged (default {REPEATS})")
    p.add_argument("--list", action="store_true", help="list the run's sites")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapt)
