"""Acquisition shift, measured on the same children: a run's error on the full-resolution
originals in ``../shared/data/rsna-fullres`` against its error on the SAME ids' 100 px
thumbnails in ``../shared/data/rsna-thumbs-100``.

Why this and not "full-res MAE against the held-out MAE": the 53 full-res ids are not a
random sample (the run's own thumbnails of them are harder than the average held-out
image), so a gap against the held-out MAE mixes who the children are with how the image
was made. Here the children are the same and only the image differs. The ids are split
by whether the full-res file is the image the thumbnail was made from (correlation of
the area-downsampled full-res image with the thumbnail >= 0.95: untouched originals) or
a copy the publisher cropped / rotated / blacked out (the thumbnail shows the original
framing, so these also differ in framing).

Not a test: prints figures (and writes JSON under ``bench/out/``, git-ignored). Runs the
evaluation's procedure (mirror + N augmented views, default 64, as ``evaluate --tta
--tta-views 64``). Ids in the run's training split are reported (a run trained with
``--exclude-ids ../shared/data/rsna-fullres`` has none).

    .venv/bin/python bench/bench_fullres.py --model models/aug10-excl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from h2a.data.imageio import read_image
from h2a.data.preprocess import prepare
from h2a.run import resolve_run
from h2a.inference.arrays import predict_arrays
from h2a.inference.loading import load_run
from h2a.studies.compare import paired_bootstrap

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAME_IMAGE_CORR = 0.95


def same_image(full: np.ndarray, thumb: np.ndarray) -> bool:
    """Whether the thumbnail was made from this full-res file (framing included)."""
    small = cv2.resize(full, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_AREA)
    return float(np.corrcoef(small.ravel(), thumb.ravel())[0, 1]) >= SAME_IMAGE_CORR


def summary(err: np.ndarray) -> dict:
    return {"n": int(len(err)), "mae": float(np.abs(err).mean()) if len(err) else None,
            "bias": float(err.mean()) if len(err) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/rsna-thumbs-boneage-cpu")
    ap.add_argument("--full", type=Path, default=SHARED / "rsna-fullres")
    ap.add_argument("--thumbs", type=Path, default=SHARED / "rsna-thumbs-100")
    ap.add_argument("--views", type=int, default=64, help="augmented views besides the mirror (0: mirror only)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    run = load_run(resolve_run(args.model))
    labels = pd.read_csv(args.full / "boneage-training-dataset.csv")
    trained = {str(i) for i in run.meta.get("splits", {}).get("train", [])}
    full, thumb, same = [], [], []
    for i in labels["id"]:
        f = read_image(args.full / "boneage-training-dataset" / f"{i}.png")
        t = read_image(args.thumbs / "boneage-training-dataset" / f"{i}.png")
        full.append(prepare(f, run.preprocess))
        thumb.append(prepare(t, run.preprocess))
        same.append(same_image(f, t))
    male = labels["male"].to_numpy().astype(np.float32)
    age = labels["boneage"].to_numpy(float)

    def months(images: list[np.ndarray]) -> np.ndarray:
        raw = predict_arrays(run.model, np.stack(images), male, run.norm, run.device, flip_tta=True,
                             augment=run.preprocess, views=args.views)
        return run.to_output(np.asarray(raw))

    pred_full, pred_thumb = months(full), months(thumb)
    same = np.array(same)
    groups = {"all": np.ones(len(age), bool), "untouched originals": same, "publisher re-cropped": ~same}
    result = {"run": run.path.name, "views": args.views, "n_in_training": int(labels["id"].astype(str).isin(trained).sum()),
              "groups": {}}
    print(f"{run.path.name}: {len(age)} ids ({result['n_in_training']} in its training split), mirror + {args.views} views")
    print(f"{'group':22s} {'n':>3s} {'thumb MAE':>9s} {'bias':>6s} {'full MAE':>9s} {'bias':>6s} "
          f"{'MAE full-thumb (95% CI)':>26s}")
    for name, m in groups.items():
        e_full, e_thumb = pred_full[m] - age[m], pred_thumb[m] - age[m]
        row = {"thumb": summary(e_thumb), "full": summary(e_full)}
        if m.sum() >= 5:
            row["difference"] = paired_bootstrap(age[m], pred_full[m], pred_thumb[m], metric="mae")
        result["groups"][name] = row
        d = row.get("difference")
        ci = f"{d['difference']:+.2f} ({d['ci_low']:+.2f} to {d['ci_high']:+.2f})" if d else "-"
        print(f"{name:22s} {m.sum():3d} {row['thumb']['mae']:9.2f} {row['thumb']['bias']:+6.2f} "
              f"{row['full']['mae']:9.2f} {row['full']['bias']:+6.2f} {ci:>26s}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{result['seconds']} s")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / f"fullres-{run.path.name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
