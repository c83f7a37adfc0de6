"""``h2a evaluate``: a run's metrics on a dataset, with the interval coverage (bone age) or the
calibration error before and after temperature scaling (sex)."""

from __future__ import annotations

import argparse

from h2a.cli.common import CliError, add_procedure_options, print_json
from h2a.progress import StderrProgress


def cmd_evaluate(args: argparse.Namespace) -> int:
    from h2a.inference.evaluate import evaluate

    try:
        result = evaluate(args.model, args.data, split=args.split, flip_tta=args.tta, tta_views=args.tta_views,
                          progress=None if args.json else StderrProgress("evaluate"))
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    metrics = result.metrics
    if args.json:
        print_json(metrics)
        return 0
    print(f"{metrics['task']} on {metrics['n']} images ({metrics['split']}) of {metrics['data']}")
    if metrics["task"] == "boneage":
        print(f"MAE {metrics['mae']:.2f} mo, RMSE {metrics['rmse']:.2f}, R2 {metrics['r2']:.3f}, "
              f"within 12 mo {100 * metrics['within_12_months']:.1f}%")
        print("MAE by sex: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics["mae_by_sex"].items()))
        print("MAE by age: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["mae_by_age_bin"].items()))
        ba = metrics["bland_altman"]
        if ba["sd"] is not None:
            print(f"Bland-Altman: bias {ba['bias']:+.2f} mo, SD {ba['sd']:.2f}, 95% limits of agreement "
                  f"{ba['loa_low']:+.2f} to {ba['loa_high']:+.2f} mo (n {ba['n']})")
        im = metrics["interval_method"]
        print(f"Interval ({im['method']}): coverage {100 * metrics['interval_coverage']:.1f}%, mean width "
              f"{metrics['interval_width_months']:.1f} mo")
        print("Coverage by age: " + ", ".join(f"{k} {100 * v:.0f}% (n {metrics['n_by_age_bin'][k]})"
                                              for k, v in metrics["coverage_by_age_bin"].items()))
        for note in (im.get("note"), im.get("in_sample_note")):
            if note:
                print(f"Note: {note}")
    else:
        auc = "n/a" if metrics["auc"] is None else f"{metrics['auc']:.3f}"
        bal = "n/a" if metrics["balanced_accuracy"] is None else f"{metrics['balanced_accuracy']:.3f}"
        print(f"AUC {auc}, accuracy {metrics['accuracy']:.3f}, balanced accuracy {bal}")
        print(f"ECE (15 bins) {metrics['ece_uncalibrated']:.3f} uncalibrated, {metrics['ece']:.3f} calibrated "
              f"({metrics['calibration']['method']})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained run on a dataset")
    p.add_argument("--model", required=True, help="run folder or name")
    p.add_argument("--data", default=None, help="dataset folder (default: the run's own dataset)")
    p.add_argument("--split", choices=["all", "validation", "holdout"], default=None,
                   help="all labelled images (default for another folder) or the run's validation/holdout ids")
    add_procedure_options(p, views_default=0,
                          views_help="also average N augmented copies (the run's own augmentation ranges)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
