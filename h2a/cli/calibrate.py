"""``h2a calibrate``: refit a run's calibration on its validation split.

Training already calibrates for the procedure ``h2a predict`` uses by default (the image
and 7 augmented copies). A conformal interval only holds for predictions made the way its
residuals were, so evaluating with another procedure (the CPU recipe's ``--tta
--tta-views 64``) needs ``h2a calibrate --tta --tta-views 64`` first; ``evaluate --json``
says ``interval_procedure_mismatch`` when they differ. For a sex run it refits the
temperature.
"""

from __future__ import annotations

import argparse

import numpy as np

from h2a.cli.common import CliError, add_procedure_options, print_json
from h2a.inference.calibration import SEX_LOGIT_SHIFT, calibration_summary
from h2a.inference.conformal import conformal_from_dict
from h2a.progress import StderrProgress
from h2a.inference.evaluate import calibrate_run


def cmd_calibrate(args: argparse.Namespace) -> int:
    if not 0 < args.level < 1:
        raise CliError(f"--level must be between 0 and 1 (e.g. 0.95), not {args.level}")
    if args.tta_views is not None and args.tta_views < 0:
        raise CliError("--tta-views must be 0 or more")
    try:
        cal = calibrate_run(args.model, flip_tta=args.tta, views=args.tta_views, level=args.level,
                            shift=args.logit_shift, progress=None if args.json else StderrProgress("calibrate"))
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    summary = calibration_summary(cal)
    if args.json:
        print_json(summary)
        return 0
    print(f"{args.model}: {summary['method']} on {cal['split']} ({summary.get('n') or cal['temperature']['n']} "
          f"images), procedure: {cal['procedure']}")
    if "interval" in cal:
        v = cal["validation_coverage"]
        conf = conformal_from_dict(cal["interval"])
        ages = np.array(HALF_WIDTH_AGES_Y, float) * 12
        for sex, male in (("girls", False), ("boys", True)):
            widths = conf.half_width(ages, np.full(len(ages), male))
            print(f"level {100 * cal['interval']['level']:g}%, {sex}: half-width "
                  + ", ".join(f"{w:.1f} mo at {a:g} y" for a, w in zip(HALF_WIDTH_AGES_Y, widths)))
        print(f"validation coverage (5-fold cross-fit) {100 * v['coverage']:.1f}%, mean width {v['width_months']:.1f} mo")
    else:
        print(f"temperature {cal['temperature']['temperature']:.3f}; validation ECE "
              f"{cal['validation_ece_uncalibrated']:.3f} -> {cal['validation_ece']:.3f}")
    return 0


HALF_WIDTH_AGES_Y = (4, 8, 12, 16)  # predicted ages the summary shows the interval's half-width at


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="refit a run's interval / probability calibration on its validation split")
    p.add_argument("--model", required=True, help="run folder or name")
    add_procedure_options(p, views_default=None,
                          views_help="augmented copies averaged (default: what h2a predict uses, 7 plus the image)")
    p.add_argument("--level", type=float, default=0.95, help="nominal coverage of the bone-age interval")
    p.add_argument("--logit-shift", action=argparse.BooleanOptionalAction, default=SEX_LOGIT_SHIFT,
                   help="sex runs: fit an offset as well as the temperature (moves the 0.5 decisions; "
                        "default on, --no-logit-shift for the temperature alone)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)
