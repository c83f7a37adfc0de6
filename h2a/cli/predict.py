"""``h2a predict``: bone age for image files, with clinical context and reports.

``--json`` prints ``h2a.predict.batch.predict_files``' records as they are: each warning
is ``{"code": ..., "message": ...}`` (codes in ``h2a.predict.alerts``), so scripts can
filter on codes rather than on wording. ``--csv FILE`` writes the predict page's table
(``h2a.predict.report.batch_csv``, escaped against formula injection).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from h2a.cli.common import CliError, print_json
from h2a.inference.calibration import DEFAULT_TTA


def cmd_predict(args: argparse.Namespace) -> int:
    from h2a.predict.batch import predict_files  # lazy: loads fpdf for this command only
    from h2a.predict.report import write_batch_csv  # lazy: loads fpdf for this command only

    if args.csv and Path(args.csv).is_dir():  # before minutes of predicting, not after
        raise CliError(f"--csv {args.csv} is a folder; give a file name")
    try:
        results = predict_files(args.model, args.files, sex=args.sex, dob=args.dob, exam_date=args.exam_date,
                                age_months=args.age_months, tta=args.tta, cam=bool(args.report_dir),
                                report_dir=args.report_dir, site=args.site, backend=args.backend)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if args.csv:
        try:
            write_batch_csv(args.csv, results)
        except OSError as exc:
            raise CliError(f"--csv {args.csv}: {exc.strerror or exc}") from exc
    if args.json:
        print_json(results if len(results) != 1 else results[0])
    else:
        for r in results:
            if r.get("error"):
                print(f"error {r['file']}: {r['error']}")
            else:
                lo, hi = r["interval_months"]
                extra = f"  SDS {r['sds']:+.2f} ({r['classification']})" if r.get("sds") is not None else ""
                print(f"{r['file']}: bone age {r['bone_age_months']:.1f} months ({lo:.0f}-{hi:.0f}){extra}")
                print(f"  site: {r['site'] or 'none'} ({r['site_reason']})")
                for w in r.get("warnings", []):
                    print(f"  warning [{w['code']}]: {w['message']}")
        if args.csv:
            print(f"table written to {args.csv}")
    return 0 if all(not r.get("error") for r in results) else 1


def register(sub) -> None:
    p = sub.add_parser("predict", help="bone age for image files (PNG, JPEG, TIFF, DICOM)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--model", default=None, help="run folder or name (default: best validated bone-age run)")
    p.add_argument("--sex", choices=["male", "female"], default=None)
    p.add_argument("--dob", default=None, metavar="YYYY-MM-DD")
    p.add_argument("--exam-date", default=None, metavar="YYYY-MM-DD")
    p.add_argument("--age-months", type=float, default=None, help="chronological age at the exam")
    p.add_argument("--tta", type=int, default=DEFAULT_TTA, metavar="N",
                   help=f"test-time views averaged (default {DEFAULT_TTA}, the procedure the run's interval was "
                        "calibrated with at the end of training)")
    p.add_argument("--site", default="auto", metavar="SITE",
                   help="site profile to apply (h2a adapt): auto (default: the run's site for images much "
                        "larger than its training images, e.g. fullres), none, or a site name")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="run the model in PyTorch or as its ONNX export through onnxruntime (exported to "
                        "RUN/model.onnx on first use); the same preprocessing, copies and interval")
    p.add_argument("--report-dir", default=None, help="write a one-page PDF per file here")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="also write the table the predict page downloads (one row per file) to FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)
