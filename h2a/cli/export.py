"""``h2a export``: a finished run in a format other tools run (ONNX for now: hospital and
PACS integrations and browser runtimes expect it).

The export is checked before it is kept (onnxruntime against PyTorch on random batches);
the figures print, or come back as one JSON document with ``--json``. A folder that is
not a finished run is an expected failure: one line, exit 2.
"""

from __future__ import annotations

import argparse

from h2a.cli.common import CliError, print_json
from h2a.inference.onnx_export import export_onnx
from h2a.predict.shipping import ship_run
from h2a.progress import StderrProgress
from h2a.run import resolve_run


def _ship(args: argparse.Namespace) -> int:
    try:
        info = ship_run(args.model, args.ship, progress=None if args.json else StderrProgress("ship"),
                        trained_on=args.trained_on)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print_json(info)
        return 0
    check = info["precision_check"]
    print(f"shipped {info['from_run']} as {info['out']} ({info['precision']}: largest change "
          f"{check['max_abs_change']:.4f} {check['unit']} on {check['n_images']} {check['split']} images, "
          f"allowed {check['tolerance']})")
    for name, size in info["files"].items():
        print(f"  {name}  {size / 1e6:.2f} MB")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.ship:
        return _ship(args)
    if not args.onnx:
        raise CliError("say which format: --onnx, or --ship DIR for a shipped run folder")

    try:
        result = export_onnx(resolve_run(args.model), args.out, opset=args.opset)
    except (OSError, ValueError) as exc:  # not a finished run, a bad opset, an unwritable --out
        raise CliError(str(exc)) from exc
    except ImportError as exc:  # onnx / onnxruntime not installed
        raise CliError(f"ONNX export needs onnx and onnxruntime (pip install -r requirements.txt): {exc}") from exc
    if args.json:
        print_json(result)
        return 0
    print(f"wrote {result['path']} ({result['size_bytes'] / 1e6:.1f} MB, opset {result['opset']}, "
          f"{result['seconds']:.1f} s)")
    print(f"inputs {', '.join(result['inputs'])} (image {result['image_shape']}); "
          f"outputs {', '.join(result['outputs'])}")
    print(f"onnxruntime vs PyTorch: max |raw difference| {result['max_abs_diff_raw']:.2e}, "
          f"embedding {result['max_abs_diff_embedding']:.2e}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained run (ONNX)")
    p.add_argument("--model", required=True, help="run folder or name")
    p.add_argument("--onnx", action="store_true", help="write an ONNX graph (default RUN/model.onnx)")
    p.add_argument("--out", default=None, metavar="FILE", help="where to write it instead of RUN/model.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    p.add_argument("--ship", default=None, metavar="DIR",
                   help="write the run as a shipped folder (models/NAME: safetensors weights, half precision "
                        "when the held-out outputs move less than the tolerance, OOD reference, sites, model card)")
    p.add_argument("--trained-on", default=None, metavar="TEXT",
                   help="with --ship: the machine and conditions of training, for the model card")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
