"""Inference throughput of a model as ``load_run`` prepares it (BatchNorm folded into the
convolutions) against the same weights unfolded, and what test-time views cost.

    .venv/bin/python bench/bench_inference.py                          # Lite0 @ 128 px, random weights
    .venv/bin/python bench/bench_inference.py --model models/NAME --views 8 --rounds 5

Prints the median images/s of ``predict_arrays`` over --rounds interleaved rounds for the
unfolded model (baseline) and the folded one, with their ratio, plus the folded model with
mirror + --views augmented views per image (images/s counts input images, not views).
Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch


from h2a.device import describe_device, resolve_device, use_channels_last  # noqa: E402
from h2a.data.transforms import input_norm
from h2a.inference.loading import load_run
from h2a.inference.arrays import predict_arrays  # noqa: E402
from h2a.models import create_model, fold_batchnorm  # noqa: E402
from h2a.data.preprocess import PreprocessConfig  # noqa: E402


def _images(n: int, size: int) -> np.ndarray:
    """Smooth random uint8 images (augmentation costs the same as on radiographs)."""
    rng = np.random.default_rng(0)
    low = rng.integers(0, 255, (n, size // 8, size // 8)).astype(np.uint8)
    return np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="a trained run (default: a random Lite0)")
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--views", type=int, default=8, help="augmented views for the TTA line (0 = skip it)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default=None)
    args = p.parse_args()

    device = resolve_device(args.device or "auto")
    if args.model:
        run = load_run(args.model, device)
        folded, cfg, norm = run.model, run.preprocess, run.norm
        unfolded = load_run(args.model, device, fold_bn=False).model
    else:
        cfg = PreprocessConfig(size=args.size)
        norm = input_norm(args.arch, cfg)
        unfolded = create_model(args.arch, "boneage", pretrained=False).to(device).eval()
        folded = copy.deepcopy(unfolded)
        fold_batchnorm(folded.backbone, torch.zeros(1, 1, cfg.size, cfg.size, device=device))
        if use_channels_last(device, None):  # as load_run does
            unfolded.to(memory_format=torch.channels_last)
            folded.to(memory_format=torch.channels_last)
    images = _images(args.images, cfg.size)
    sex = np.ones(len(images), np.float32)

    def rate(model: torch.nn.Module, views: int = 0) -> float:
        t0 = time.perf_counter()
        predict_arrays(model, images, sex, norm, device, flip_tta=views > 0,
                       augment=cfg if views else None, views=views)
        return len(images) / (time.perf_counter() - t0)

    rate(unfolded), rate(folded)  # warm-up
    runs: dict[str, list[float]] = {"unfolded": [], "folded": [], "tta": []}
    for _ in range(args.rounds):
        runs["unfolded"].append(rate(unfolded))
        runs["folded"].append(rate(folded))
        if args.views:
            runs["tta"].append(rate(folded, args.views))
    base = statistics.median(runs["unfolded"])
    print(f"{describe_device(device)}; {args.model or args.arch} at {cfg.size} px, {len(images)} images, "
          f"median of {args.rounds} rounds")
    print(f"  unfolded BatchNorm      {base:8.1f} img/s  1.00x")
    fold = statistics.median(runs["folded"])
    print(f"  folded (as load_run)    {fold:8.1f} img/s  {fold / base:.2f}x")
    if args.views:
        tta = statistics.median(runs["tta"])
        print(f"  folded, mirror + {args.views} views {tta:8.1f} img/s  {tta / base:.2f}x "
              f"({tta * (args.views + 2):.0f} views/s)")


if __name__ == "__main__":
    main()
