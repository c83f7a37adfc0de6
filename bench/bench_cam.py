"""Which heat map points at the hand: Grad-CAM / Grad-CAM++ at the trunk's last stage and
finer ones, judged on a run's held-out thumbnails and the full-resolution originals.

For each (stage, method):

* **hand share**: the share of the map's mass inside the hand (the hand mask the crop uses,
  ``h2a.data.orientation.hand_mask``, on the model's own input); a map that lights the
  black background or the corners scores low. Uniform maps score the hand's share of the
  frame (printed as the baseline).
* **randomisation check** (Adebayo et al. 2018): the rank correlation between the trained
  model's map and the map of the same model with its trunk re-initialised at random; a map
  that barely changes shows the image's edges, not what the model learned (lower is better).

Not a test: prints figures (JSON under ``bench/out/``).

    .venv/bin/python bench/bench_cam.py --model models/h2a-boneage --n 200
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.stats import spearmanr

from h2a.data.orientation import hand_mask
from h2a.data.transforms import array_input
from h2a.run import Run, resolve_run
from h2a.inference.cam import CAM_METHODS, DEFAULT_CAM, grad_cam
from h2a.inference.evaluate import split_images
from h2a.inference.loading import load_run
from h2a.inference.sites import site_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "out"
STAGES = (-1, -2, -3)


def masks(u8: np.ndarray) -> np.ndarray:
    """The hand mask of each input image, at the input size."""
    out = []
    for im in u8:
        m = hand_mask(im.astype(np.float32) / 255.0).astype(np.uint8)
        out.append(cv2.resize(m, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool))
    return np.stack(out)


def maps(model, u8: np.ndarray, male: np.ndarray, norm, stage: int, method: str, batch: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(u8), batch):
        x = array_input(np.ascontiguousarray(u8[i:i + batch]), norm, torch.device("cpu"))
        sex = torch.tensor(np.asarray(male[i:i + batch], np.float32)) if model.use_sex else None
        out.append(grad_cam(model, x, sex, stage=stage, method=method))
    return np.concatenate(out)


def randomised(model):
    """The model with its trunk's weights re-initialised (the head kept)."""
    m = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.backbone.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * p.std())
    return m


def score(cams: np.ndarray, hand: np.ndarray, cams_rand: np.ndarray) -> dict:
    mass = cams.reshape(len(cams), -1).sum(1)
    inside = (cams * hand).reshape(len(cams), -1).sum(1)
    ok = mass > 0
    share = inside[ok] / mass[ok]
    rho = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(cams, cams_rand) if a.any() and b.any()]
    return {"hand_share": float(share.mean()) if ok.any() else None,
            "hand_share_se": float(share.std(ddof=1) / np.sqrt(len(share))) if ok.sum() > 1 else None,
            "empty_maps": int((~ok).sum()),
            "randomisation_rho": float(np.nanmean(rho)) if rho else None}


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/h2a-boneage")
    ap.add_argument("--n", type=int, default=200, help="held-out thumbnails")
    ap.add_argument("--fullres", type=Path, default=SHARED / "rsna-fullres")
    ap.add_argument("--write-run", action="store_true", help="also keep the figures in RUN/heatmap.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    path = resolve_run(args.model)
    run = load_run(path)
    sets = {}
    images = split_images(run, None, "holdout" if run.meta.get("splits", {}).get("holdout") else "validation")
    rows = images.rows[:args.n]
    sets["held-out thumbnails"] = (np.asarray(images.cache.take(rows)),
                                   images.labelled["male"].astype(bool).to_numpy()[:args.n])
    if args.fullres.is_dir():
        full = site_images(run, args.fullres)
        sets["full-resolution originals"] = (full.u8, full.male)
    rand = randomised(run.model)
    result = {"model": path.name, "default": list(DEFAULT_CAM), "sets": {}}
    for name, (u8, male) in sets.items():
        hand = masks(u8)
        print(f"\n{name} ({len(u8)} images; the hand fills {hand.mean():.2f} of the frame: a uniform map's share)")
        print(f"{'stage':>6} {'method':<10} {'grid':>6} {'hand share (SE)':>17} {'rank corr. with random trunk':>30}")
        rows_out = []
        for stage in STAGES:
            for method in CAM_METHODS:
                try:
                    cams = maps(run.model, u8, male, run.norm, stage, method)
                    cams_r = maps(rand, u8, male, run.norm, stage, method)
                except ValueError as exc:
                    print(f"{stage:>6} {method:<10} {exc}")
                    continue
                _, acts = run.model.features_and_stage(array_input(u8[:1], run.norm, torch.device("cpu")), stage)
                s = score(cams, hand, cams_r)
                s.update(stage=stage, method=method, grid=int(acts.shape[-1]))
                rows_out.append(s)
                print(f"{stage:>6} {method:<10} {s['grid']:>4}px {_f(s['hand_share']):>10} ({_f(s['hand_share_se'])})"
                      f" {_f(s['randomisation_rho']):>30}   empty maps {s['empty_maps']}")
        result["sets"][name] = {"n": len(u8), "hand_fraction": float(hand.mean()), "rows": rows_out}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.write_run:  # the model card and the Evaluation page read it from the run folder
        Run.at(path).write_record("heatmap", result)
    OUT.mkdir(exist_ok=True)
    (OUT / f"cam-{path.name}.json").write_text(json.dumps(result, indent=2))
    print(f"\n{result['seconds']:.0f} s; written to bench/out/cam-{path.name}.json")


if __name__ == "__main__":
    main()
