"""``h2a robustness``: a run's MAE, bias and flagged share under perturbations of how the
image was made (``h2a.analysis.robustness``)."""

from __future__ import annotations

import argparse

from h2a.cli.common import CliError, print_json
from h2a.progress import StderrProgress
from h2a.analysis.robustness import SPLITS, perturbation_names, robustness_report
from h2a.data.datasets import DatasetError


def cmd_robustness(args: argparse.Namespace) -> int:
    try:
        result = robustness_report(args.model, args.data, split=args.split, limit=args.limit,
                                   perturbations=args.only, ood=args.ood, tta=args.tta,
                                   progress=StderrProgress("robustness"))
    except (FileNotFoundError, ValueError, DatasetError) as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print_json(result.to_dict())
        return 0
    info = result.info
    print(f"{info['run']} on {info['n_images']} images ({info['split']}) of {info['data']}; "
          f"{info['n_in_training']} of them were trained on")
    print(f"flags: {info['checks']}")
    print(f"{'perturbation':18s} {'kind':11s} {'n':>5s} {'MAE':>7s} {'change':>7s} {'bias':>7s} {'shift':>7s} "
          f"{'flagged':>8s}  top flags")
    for r in result.table.itertuples(index=False):
        top = ", ".join(f"{k} {v}" for k, v in list(r.flag_codes.items())[:3])
        print(f"{r.perturbation:18s} {r.kind:11s} {r.n:5d} {r.mae:7.2f} {r.mae_change:+7.2f} {r.bias:+7.2f} "
              f"{r.shift:7.2f} {100 * r.flagged:7.1f}%  {top}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser("robustness", help="a bone-age run's error and flags under perturbations of how "
                                          "the image was made (gamma, blur, JPEG, resampling, noise, "
                                          "inversion, rotation, resolution)")
    p.add_argument("--model", required=True, help="run folder or name (a bone-age run)")
    p.add_argument("--data", default=None, help="dataset folder (default: the run's own dataset)")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="the run's holdout / validation ids (in any folder that holds them) or all labelled "
                        "images (default: holdout, else validation, for the run's own folder; all for another)")
    p.add_argument("--limit", type=_positive, default=None, metavar="N",
                   help="at most N images (a seeded sample, so reruns compare the same images)")
    p.add_argument("--only", nargs="+", choices=perturbation_names(), default=None, metavar="NAME",
                   help="only these perturbations (the unperturbed baseline always runs): "
                        + ", ".join(perturbation_names()))
    p.add_argument("--no-ood", dest="ood", action="store_false",
                   help="skip the out-of-distribution embedding check (faster; fewer flags)")
    p.add_argument("--tta", type=_positive, default=1, metavar="N",
                   help="test-time copies per prediction, as predict (default: 1, the model's single answer)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_robustness)
