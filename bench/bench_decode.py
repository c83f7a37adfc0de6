"""Decode speed of full-resolution radiographs: the PIL path vs the cv2 fast path, one run.

    .venv/bin/python bench/bench_decode.py                      # ../shared/data/rsna-fullres
    .venv/bin/python bench/bench_decode.py --data DIR --repeat 3

Both paths are h2a.data.imageio.read_image (header check, conversion to float32 [0, 1],
everything); the PIL path is forced by switching the fast path off. Files are decoded
alternately (PIL, fast, fast, PIL, ...) so a busy shared machine slows both alike, and
the outputs are compared (they must be identical). Wall and CPU time are both printed;
on a shared machine the CPU-time ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from h2a.data import imageio

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rsna-fullres"
SUFFIXES = (".png", ".jpg", ".jpeg")


@contextmanager
def pil_only() -> Iterator[None]:
    """read_image as it was before the fast path: every file through PIL."""
    fast = imageio._cv2_gray
    imageio._cv2_gray = lambda *args: None
    try:
        yield
    finally:
        imageio._cv2_gray = fast


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def timed(path: Path) -> tuple[np.ndarray, float, float]:
    """(image, wall seconds, CPU seconds of this thread) of one read_image."""
    w0, c0 = time.perf_counter(), time.thread_time()
    img = imageio.read_image(path)
    return img, time.perf_counter() - w0, time.thread_time() - c0


def fast_path_taken(path: Path) -> bool:
    fast = imageio._cv2_gray
    taken: list[bool] = []

    def spy(*args):
        out = fast(*args)
        taken.append(out is not None)
        return out

    imageio._cv2_gray = spy
    try:
        imageio.read_image(path)
    finally:
        imageio._cv2_gray = fast
    return any(taken)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of images (searched recursively)")
    ap.add_argument("--repeat", type=int, default=2, help="passes over the files per path")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N files")
    args = ap.parse_args(argv)
    files = image_files(args.data)[: args.limit]
    if not files:
        print(f"No PNG/JPEG files under {args.data}")
        return 1
    mb = sum(p.stat().st_size for p in files) / 2**20
    taken = sum(fast_path_taken(p) for p in files)
    print(f"H2A decode benchmark: {len(files)} files ({mb:.0f} MiB) from {args.data}, {args.repeat} passes, "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; fast path taken for {taken}/{len(files)}")
    for p in files[:2]:  # warm-up: imports, page cache, allocator
        timed(p)
        with pil_only():
            timed(p)
    wall = {"pil": [], "fast": []}
    cpu = {"pil": [], "fast": []}
    mismatches = 0
    for rep in range(args.repeat):
        for i, path in enumerate(files):
            order = ("pil", "fast") if (i + rep) % 2 == 0 else ("fast", "pil")
            images = {}
            for which in order:
                if which == "pil":
                    with pil_only():
                        images[which], w, c = timed(path)
                else:
                    images[which], w, c = timed(path)
                wall[which].append(w)
                cpu[which].append(c)
            mismatches += not np.array_equal(images["pil"], images["fast"])
    for which, label in (("pil", "PIL path "), ("fast", "cv2 path ")):
        print(f"  {label}: {1000 * statistics.mean(wall[which]):7.1f} ms/image wall "
              f"(median {1000 * statistics.median(wall[which]):6.1f}), "
              f"{1000 * statistics.mean(cpu[which]):7.1f} ms/image CPU")
    print(f"  speed-up : {sum(wall['pil']) / sum(wall['fast']):.2f}x wall, "
          f"{sum(cpu['pil']) / sum(cpu['fast']):.2f}x CPU   (issue 18: 160 -> ~63 ms, 2.5x)")
    print(f"  outputs identical on both paths: {mismatches == 0} ({mismatches} differ)")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
