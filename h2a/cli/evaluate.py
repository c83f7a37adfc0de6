"""``h2a evaluate``: a run's metrics on a dataset, with the interval coverage (bone age) or the
calibration error before and after temperature scaling (sex).

A dataset where no labelled image decodes is an expected failure (one line, exit 2); a
figure undefined on the images given (R² of one image, AUC with one sex) prints as n/a
and is null in ``--json``, never NaN.
"""

from __future__ import annotations

import argparse

from h2a.cli.common import CliError, add_procedure_options, print_json
from h2a.progress import StderrProgress
from h2a.inference.evaluate import evaluate


def _f(value: float | None, spec: str = ".2f", scale: float = 1.0) -> str:
    """A figure, or 'n/a' when it is undefined on these images."""
    return "n/a" if value is None else format(scale * value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _print_boneage(m: dict) -> None:
    print(f"MAE {_f(m['mae'])} mo, RMSE {_f(m['rmse'])}, R2 {_f(m['r2'], '.3f')}, "
          f"within 12 mo {_pct(m['within_12_months'])}")
    print("MAE by sex: " + ", ".join(f"{k} {_f(v)}" for k, v in m["mae_by_sex"].items()))
    print("MAE by age: " + ", ".join(f"{k} {_f(v, '.1f')}" for k, v in m["mae_by_age_bin"].items()))
    ba = m["bland_altman"]
    if ba["sd"] is not None:
        print(f"Bland-Altman: bias {ba['bias']:+.2f} mo, SD {ba['sd']:.2f}, 95% limits of agreement "
              f"{ba['loa_low']:+.2f} to {ba['loa_high']:+.2f} mo (n {ba['n']})")
    im = m["interval_method"]
    print(f"Interval ({im['method']}): coverage {_pct(m['interval_coverage'])}, mean width "
          f"{_f(m['interval_width_months'], '.1f')} mo")
    print("Coverage by age: " + ", ".join(f"{k} {_f(v, '.0f', 100)}% (n {m['n_by_age_bin'][k]})"
                                          for k, v in m["coverage_by_age_bin"].items()))
    for note in (im.get("note"), im.get("in_sample_note")):
        if note:
            print(f"Note: {note}")


def _print_sex(m: dict) -> None:
    print(f"AUC {_f(m['auc'], '.3f')}, accuracy {_f(m['accuracy'], '.3f')}, "
          f"balanced accuracy {_f(m['balanced_accuracy'], '.3f')}")
    print(f"ECE (15 bins) {_f(m.get('ece_uncalibrated'), '.3f')} uncalibrated, {_f(m.get('ece'), '.3f')} "
          f"calibrated ({m['calibration']['method']})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        result = evaluate(args.model, args.data, split=args.split, flip_tta=args.tta, tta_views=args.tta_views,
                          progress=None if args.json else StderrProgress("evaluate"), site=args.site)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    metrics = result.metrics
    if args.json:
        print_json(metrics)
        return 0
    print(f"{metrics['task']} on {metrics['n']} images ({metrics['split']}) of {metrics['data']}"
          + (f", site {metrics['site']} ({', '.join(metrics['site_parts']) or 'no part kept'})"
             if metrics.get("site") else ""))
    if metrics.get("n_failed_images"):
        print(f"{metrics['n_failed_images']} labelled images could not be decoded and were left out")
    if metrics["task"] == "boneage":
        _print_boneage(metrics)
    else:
        _print_sex(metrics)
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained run on a dataset")
    p.add_argument("--model", required=True, help="run folder or name")
    p.add_argument("--data", default=None, help="dataset folder (default: the run's own dataset)")
    p.add_argument("--split", choices=["all", "validation", "holdout"], default=None,
                   help="all labelled images (default for another folder) or the run's validation/holdout ids")
    add_procedure_options(p, views_default=0,
                          views_help="also average N augmented copies (the run's own augmentation ranges)")
    p.add_argument("--site", default=None, metavar="SITE",
                   help="apply the run's site profile SITE (h2a adapt) to every image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
