"""Site adaptation measured on the 53 full-resolution RSNA radiographs (``../shared/data/rsna-fullres``).

Prints, for a bone-age run:

1. the cross-validated table ``h2a adapt`` decides on: no adaptation, each part alone
   (BatchNorm statistics, the sex-specific correction in both forms, the site interval)
   and the kept parts together; MAE (its standard error), bias, 95% interval coverage and
   width, and the paired bootstrap CI of each MAE against no adaptation;
2. unlabelled adaptation alone: the BatchNorm statistics re-estimated on all the images
   with their labels hidden (as ``h2a adapt --unlabelled`` does), judged afterwards with
   the labels;
3. ``--curve``: how many labelled images a correction needs, as the cross-validated MAE
   of the correction against none on random subsets of n images (the basis of
   ``h2a.inference.sites.MIN_LABELLED``).

Not a test: figures only (JSON under ``bench/out/``, git-ignored).

    .venv/bin/python bench/bench_sites.py --model models/h2a-boneage --curve
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from h2a.run import resolve_run
from h2a.inference.calibration import predict_procedure
from h2a.inference.loading import load_run
from h2a.inference.site_profile import SexCorrection
from h2a.inference.sites import _folds, _months, adabn_stats, cross_validate, site_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "out"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def curve(pred: np.ndarray, y: np.ndarray, male: np.ndarray, sizes: list[int], draws: int, seed: int = 0) -> list[dict]:
    """Cross-validated MAE of the intercept correction against none on random subsets."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        gains = []
        for _ in range(draws):
            idx = rng.choice(len(y), size=min(n, len(y)), replace=False)
            p, t, m = pred[idx], y[idx], male[idx]
            corr = np.empty(len(idx))
            for test in _folds(len(idx), 5, 1, int(rng.integers(1 << 30)))[0]:
                train = np.setdiff1d(np.arange(len(idx)), test)
                corr[test] = SexCorrection("intercept").fit(p[train], t[train], m[train]).apply(p[test], m[test])
            gains.append(np.abs(corr - t).mean() - np.abs(p - t).mean())
        g = np.asarray(gains)
        out.append({"n": int(n), "draws": draws, "mae_change_mean": float(g.mean()),
                    "mae_change_p10": float(np.percentile(g, 10)), "mae_change_p90": float(np.percentile(g, 90)),
                    "share_helped": float((g < 0).mean())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/h2a-boneage")
    ap.add_argument("--data", type=Path, default=SHARED / "rsna-fullres")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--curve", action="store_true", help="also the MAE-against-n curve of the correction")
    ap.add_argument("--draws", type=int, default=200, help="random subsets per n for --curve")
    args = ap.parse_args()

    t0 = time.perf_counter()
    path = resolve_run(args.model)
    run = load_run(path, fold_bn=False)
    images = site_images(run, args.data)
    print(f"{path.name} on {len(images)} images of {images.data_name} ({cpu_name()}); procedure "
          f"{predict_procedure().describe()}")
    cv = cross_validate(run, images, repeats=args.repeats)
    print(f"\n1. Cross-validated ({cv['folds']} folds by child, {cv['repeats']} assignments averaged):")
    print(f"{'variant':<30}{'MAE (SE)':>15}{'bias':>8}{'coverage':>10}{'width':>8}   MAE vs none (95% CI)")
    for name, v in cv["variants"].items():
        d = cv["differences"].get(name)
        diff = f"{d['mae_difference']:+.2f} ({d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f})" if d else ""
        print(f"{name:<30}{v['mae']:>8.2f} ({v['mae_se']:.2f}){v['bias']:>+8.2f}{v['coverage']:>10.3f}"
              f"{v['width_months']:>8.1f}   {diff}")
    print("kept: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cv["keep"].items()))

    procedure = predict_procedure()
    plain = load_run(path)
    none = _months(plain, images.u8, images.male, procedure)
    adapted = load_run(path, bn_stats=adabn_stats(run.model, images.u8, run.norm, run.device))
    bn = _months(adapted, images.u8, images.male, procedure)
    y = images.age
    unl = {"none": {"mae": float(np.abs(none - y).mean()), "bias": float((none - y).mean())},
           "bn (labels hidden)": {"mae": float(np.abs(bn - y).mean()), "bias": float((bn - y).mean())}}
    print("\n2. Unlabelled adaptation alone (statistics from all the images, labels hidden, then judged):")
    for k, v in unl.items():
        print(f"{k:<30}MAE {v['mae']:.2f}  bias {v['bias']:+.2f}")

    result = {"model": path.name, "data": str(args.data), "n": len(images), "cpu": cpu_name(),
              "cross_validated": cv, "unlabelled": unl}
    if args.curve:
        sizes = [n for n in (8, 12, 16, 20, 30, 40, len(images)) if n <= len(images)]
        result["curve"] = curve(none, y, images.male, sizes, args.draws)
        print("\n3. Labelled images a correction needs (cross-validated MAE change against none, "
              f"{args.draws} random subsets per n):")
        print(f"{'n':>4}{'mean change':>14}{'10th-90th pct':>22}{'share helped':>14}")
        for r in result["curve"]:
            print(f"{r['n']:>4}{r['mae_change_mean']:>+14.2f}   {r['mae_change_p10']:+7.2f} to {r['mae_change_p90']:+6.2f}"
                  f"{r['share_helped']:>14.2f}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    OUT.mkdir(exist_ok=True)
    (OUT / f"sites-{path.name}.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"\n{result['seconds']:.0f} s; written to bench/out/sites-{path.name}.json")


if __name__ == "__main__":
    main()
