"""Peak memory of decoding large images through h2a.data.imageio (the predict path).

WHY: issue 17 asks that predicting an 80-megapixel RGB PNG needs at most 1 GB above the
process baseline. Each case runs ``read_image`` in a fresh interpreter under
``/usr/bin/time -f %M`` (peak RSS, KiB), next to a baseline child that imports the same
modules and builds the same file but does not decode it; the difference is the decode.

    python bench/bench_decode_memory.py [--mp 80] [--out DIR]

Run with PYTHONPATH pointing at another checkout to measure that code instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CASES = ("rgb_png", "float_tiff", "gray16_png")


def make_image(kind: str, megapixels: float, folder: Path) -> Path:
    """A smooth picture (compresses well, like the issue's 233 KB / 552 KB files)."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(megapixels * 1e6 // width)
    ramp = (np.arange(width, dtype=np.uint32) * 255 // max(width - 1, 1)).astype(np.uint8)
    path = folder / f"{kind}-{megapixels:g}mp.{'tif' if 'tiff' in kind else 'png'}"
    if path.exists():
        return path
    if kind == "rgb_png":
        row = np.stack([ramp, ramp[::-1], np.full_like(ramp, 128)], axis=-1)
        Image.fromarray(np.broadcast_to(row, (height, width, 3)).copy()).save(path, compress_level=1)
    elif kind == "float_tiff":
        im = Image.fromarray(np.broadcast_to(ramp.astype(np.float32) / 255, (height, width)).copy(), "F")
        im.save(path, compression="tiff_deflate")
    elif kind == "gray16_png":
        data = np.broadcast_to((ramp.astype(np.uint16) * 16), (height, width)).copy()
        Image.fromarray(data).save(path, compress_level=1)
    else:
        raise ValueError(kind)
    return path


_CHILD = """
import sys
import numpy as np
from h2a.data import imageio
if sys.argv[2] == "decode":
    img = imageio.read_image(sys.argv[1])
    assert img.dtype == np.float32, img.dtype
    print(img.shape[1], img.shape[0])
print(imageio.__file__)
"""


def peak_kib(path: Path, what: str) -> int:
    """Peak RSS (KiB) of a child that imports imageio and, for 'decode', decodes ``path``."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", _CHILD, str(path), what],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          cwd=tempfile.gettempdir())  # not the repo: PYTHONPATH must decide
    used = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "?"
    if what == "decode":
        print(f"  ({path.name} decoded by {used})")
    if proc.returncode != 0:
        raise SystemExit(f"{what} {path.name} failed:\n{proc.stderr[-2000:]}")
    return int(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mp", type=float, default=80.0, help="megapixels per image (default 80)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the generated images (kept)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="h2a-bench-decode-"))
    folder.mkdir(parents=True, exist_ok=True)
    import h2a.data.imageio as imageio

    print(f"imageio from {Path(imageio.__file__).parent.parent.parent}")
    base = None
    for kind in args.cases:
        path = make_image(kind, args.mp, folder)
        base = base or peak_kib(path, "baseline")
        peak = peak_kib(path, "decode")
        print(f"{kind:<11} {path.stat().st_size / 1e3:9.0f} KB file  peak RSS {peak / 1024:7.0f} MiB  "
              f"above baseline {(peak - base) / 1024:7.0f} MiB  (baseline {base / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
