"""The demo data is pinned: SHA-256 fingerprints of rendered hands and of a small generated
dataset, computed from the renderer before it was split into stages (issue 29).

WHY: the demo dataset is promised reproducible byte-for-byte from its seed, and trained
runs, caches and docs figures are built from it. Refactoring ``render_hand`` must not move
one random draw; a draw added, dropped or reordered changes every later pixel, so these
hashes catch it. The constants hold for the numpy/OpenCV versions the project pins; if an
upgrade of either changes them, that is a data change: regenerate them deliberately.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from h2a.data.demo import DEMO_MARKER, TRAIN_CSV, TRAIN_DIR, VAL_CSV, VAL_DIR, generate_demo, render_hand

# (bone age months, male, seed, size or None) -> (shape, sha256 of the uint8 pixels).
# Seeds chosen to reach every branch: no marker (14, 31), collimation (2, 11), washed-out
# background (2, 31), marker initials 0-3 letters, all six marker anchors, with and
# without the marker's backing rectangle; ages from birth (no carpals) to 240 (all fused).
RENDERS: list[tuple[tuple[float, bool, int, tuple[int, int] | None], tuple[int, int], str]] = [
    ((0.0, False, 0, (96, 80)), (96, 80), "91e35a6f538cd69e6883d207c3df139e569575b668203d00cb756220b975a676"),
    ((5.0, True, 1, (96, 80)), (96, 80), "2269b04e70a5c9631cb95bb568cb1044b326cce69599e940a107e122c9300618"),
    ((30.0, False, 2, (96, 80)), (96, 80), "461c7a2a4be91d2db1323ede111933bfef5550006f240c0278974e55e2ad822e"),
    ((70.0, True, 3, (96, 80)), (96, 80), "435301446ca4e6d615f0009ee5230f268c78758e19a155b6fa985518cc854a05"),
    ((120.0, False, 4, (96, 80)), (96, 80), "748694c6315e5ded2ec2c40710fdd79ccdacfcaef7443d297b3bfb20d2e7e9a0"),
    ((160.0, True, 5, (96, 80)), (96, 80), "7cee29312657db1bc14847b9133ab0eef963b3d56c1da93d78c1d4e5b9e3bf3a"),
    ((185.0, False, 6, (96, 80)), (96, 80), "67430361c2011cc99f9ee7dc6596ece6f3552d22b456a0086bdd9c4aa5b710fb"),
    ((228.0, True, 7, (96, 80)), (96, 80), "83946089b30bc6d89d3e0d3fcf8b65da587855ab198dadeb1c07a13082bb7a43"),
    ((240.0, False, 8, None), (302, 259), "948a0608a3925829b88a09154b3d89f158528498f67ab86f2fe306b44b0bb9e6"),
    ((100.0, True, 11, (80, 64)), (80, 64), "cb04ab65e21ae714b9c3f4537aff98ec45afbf5b571e016d7eea93e9d6f3e251"),
    ((150.5, False, 12, (80, 64)), (80, 64), "0559d21094caf5be9c50fb8720da4491c2f32ccd683321afce651c5f48ee16e2"),
    ((200.0, True, 13, None), (314, 265), "4a0d794a7cfb75a605df238475d46fd4f40f0dbc6a07f2abc28c4955cd78b9e0"),
    ((90.0, False, 14, None), (265, 209), "ff1e1c76fbec03201229708161dd58cfdd13d4fef1058b71d41e9077efffa44a"),
    ((45.0, True, 31, (96, 80)), (96, 80), "cebea4cae962287dfc87d765f1fdff0a0642cde77ce9dc9148b88f5a6d0dabe0"),
]

# generate_demo(n=8, seed=4): both CSVs, the marker, then every image's shape and pixels.
DATASET_N, DATASET_SEED = 8, 4
DATASET_SHA256 = "4f8451c9175a3c90aa6448105fd7c154fd648ec15ca8f4f98ed65ab66c2b6308"


def _sha(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


@pytest.mark.parametrize("args,shape,digest", RENDERS, ids=[f"age{a[0]}-{'m' if a[1] else 'f'}-s{a[2]}"
                                                            for a, _, _ in RENDERS])
def test_render_hand_pixels_are_pinned(args: tuple, shape: tuple[int, int], digest: str) -> None:
    img = render_hand(*args)
    assert img.dtype == np.uint8 and img.shape == shape
    assert _sha(img) == digest, "render_hand's output changed: a random draw moved or a stage changed"


def dataset_digest(root: Path) -> str:
    """One hash over a generated dataset: CSV and marker bytes, then decoded pixels (not PNG
    bytes, so a zlib/libpng build with other compression does not count as a change)."""
    h = hashlib.sha256()
    for name in (TRAIN_CSV, VAL_CSV, DEMO_MARKER):
        h.update((root / name).read_bytes())
    for folder in (TRAIN_DIR, VAL_DIR):
        for p in sorted((root / folder).iterdir(), key=lambda p: int(p.stem)):
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            h.update(f"{folder}/{p.name}:{img.shape}".encode())
            h.update(img.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("workers", [1, 2])
def test_generated_dataset_is_pinned(tmp_path: Path, workers: int) -> None:
    root = generate_demo(tmp_path / "demo", n=DATASET_N, seed=DATASET_SEED, workers=workers)
    assert dataset_digest(root) == DATASET_SHA256
