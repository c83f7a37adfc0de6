"""Build an RSNA-sized dataset (12,611 full-resolution radiographs) from the few real originals.

Usage: python bench/make_scale_dataset.py --n 12611 --out DIR [--source ../shared/data/rsna-fullres]
       [--seed 0] [--val N] [--link auto|hard|sym]

WHY: every figure used to come from 100 px thumbnails; users bring the real download.
The benches (pages, decode, cache build) need that size without 10 GB of copies, so each
new id is a link to one of the full-resolution originals in ``--source``, in the Kaggle
layout the app reads (see h2a/data/datasets.py):

    DIR/boneage-training-dataset.csv          id,boneage,male
    DIR/boneage-training-dataset/<id>.png
    DIR/boneage-validation-dataset.csv        Image ID,male,Bone Age (months)  (official layout)
    DIR/boneage-validation-dataset/<id>.png
    DIR/SCALE_DATASET.json                    what this is; marks the folder as ours

Labels are drawn jointly (age with its sex) from the 11,005 real training labels in
``rsna-thumbs-100``, so the age distribution (1-228 months) and the ~54% male share are
the real dataset's; they are NOT the labels of the linked pictures (a bench fixture, not
training data). Links are hard links when the output is on the source's filesystem: each
id is then a distinct path to the app (as in a real download: header and fingerprint work
scale with the ids, not with the 53 originals, because the loader resolves symlinks to
their target), at no disk cost. Elsewhere they are symlinks.

Idempotent: a rerun into the same folder with the same arguments changes nothing; with
other arguments it rewrites the folder's own files. A folder that exists, is not empty
and does not carry SCALE_DATASET.json is refused (exit 2), so nothing of a user's is ever
overwritten.
"""

from __future__ import annotations

import argparse
import csv
import errno
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "rsna-fullres"
DEFAULT_LABELS = REPO.parent / "shared" / "data" / "rsna-thumbs-100" / "boneage-training-dataset.csv"
MARKER = "SCALE_DATASET.json"
TRAIN_CSV, TRAIN_DIR = "boneage-training-dataset.csv", "boneage-training-dataset"
VAL_CSV, VAL_DIR = "boneage-validation-dataset.csv", "boneage-validation-dataset"
FIRST_ID = 1377  # the real training ids start here
# The real download: 12,611 training and 1,425 validation images; keep that proportion.
VAL_PER_TRAIN = 1425 / 12611
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ScaleDatasetError(Exception):
    """The output folder cannot be used (not ours, or the sources are missing)."""


def source_images(source: Path) -> list[Path]:
    """The originals to link to, in a fixed order (the seed then fixes everything)."""
    folder = source / TRAIN_DIR if (source / TRAIN_DIR).is_dir() else source
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ScaleDatasetError(f"{folder}: no PNG/JPEG originals to link to")
    return images


def real_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(bone age months, male) of the real training labels, read with the csv module
    (no pandas: this script must start in well under a second)."""
    ages, males = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            ages.append(int(float(row["boneage"])))
            males.append(row["male"].strip().lower() in ("true", "1", "m", "male"))
    if not ages:
        raise ScaleDatasetError(f"{path}: no labels")
    return np.asarray(ages, np.int64), np.asarray(males, bool)


def draw_labels(n: int, ages: np.ndarray, males: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n (age, sex) pairs resampled jointly from the real ones, clipped to 1-228 months."""
    pick = rng.integers(0, len(ages), size=n)
    return np.clip(ages[pick], 1, 228), males[pick]


def check_output(out: Path) -> None:
    """Refuse a folder that holds anything and is not a scale dataset."""
    if out.exists() and not out.is_dir():
        raise ScaleDatasetError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ScaleDatasetError(f"{out}: folder is not empty and is not a scale dataset "
                                f"(no {MARKER}); refusing to write into it")


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic replace, skipped when identical (keeps mtimes, so the dataset fingerprint
    and the header cache survive a rerun)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _link(target: Path, dest: Path, mode: str) -> str:
    """Make ``dest`` a link to ``target`` (unchanged when it already is); returns the kind."""
    if dest.is_symlink() or dest.exists():
        try:
            if os.path.samefile(dest, target):
                return "sym" if dest.is_symlink() else "hard"
        except OSError:
            pass
        dest.unlink()
    if mode in ("auto", "hard"):
        try:
            os.link(target, dest)
            return "hard"
        except OSError as exc:
            if mode == "hard" or exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK):
                raise
    os.symlink(target, dest)
    return "sym"


def _sync_folder(folder: Path, ids: list[int], images: list[Path], rng_order: np.ndarray, mode: str) -> dict[str, int]:
    """Links ``<id><suffix>`` for each id, and removes image files no longer listed."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, Path] = {}
    for image_id, k in zip(ids, rng_order):
        src = images[int(k)]
        wanted[f"{image_id}{src.suffix.lower()}"] = src
    for entry in os.scandir(folder):
        if entry.name not in wanted and entry.name.lower().endswith(IMAGE_SUFFIXES):
            os.unlink(entry.path)
    kinds = {"hard": 0, "sym": 0}
    for name, src in wanted.items():
        kinds[_link(src, folder / name, mode)] += 1
    return kinds


def _csv_text(header: list[str], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def build(n: int, out: Path, *, source: Path = DEFAULT_SOURCE, labels: Path = DEFAULT_LABELS,
          seed: int = 0, n_val: int | None = None, link: str = "auto") -> dict:
    """Build (or bring up to date) the scale dataset; returns a summary dict."""
    if n < 1:
        raise ScaleDatasetError("--n must be at least 1")
    out = Path(out).expanduser().resolve()
    check_output(out)
    images = [p.resolve() for p in source_images(Path(source))]
    ages, males = real_labels(Path(labels))
    n_val = max(1, round(n * VAL_PER_TRAIN)) if n_val is None else n_val
    rng = np.random.default_rng(seed)
    age_t, male_t = draw_labels(n, ages, males, rng)
    age_v, male_v = draw_labels(n_val, ages, males, rng)
    # Every original used about equally often, in a seeded order.
    pick_t = rng.permutation(np.arange(n) % len(images))
    pick_v = rng.permutation(np.arange(n_val) % len(images))
    train_ids = list(range(FIRST_ID, FIRST_ID + n))
    val_ids = list(range(FIRST_ID + n, FIRST_ID + n + n_val))  # distinct from training ids
    out.mkdir(parents=True, exist_ok=True)
    summary = {"kind": "h2a scale dataset", "n_train": n, "n_val": n_val, "seed": seed,
               "source": str(Path(source).resolve()), "originals": len(images),
               "labels": "resampled from the real RSNA training labels; not the pictures' own"}
    _write_if_changed(out / MARKER, json.dumps(summary, indent=2) + "\n")  # first: marks the folder
    kinds_t = _sync_folder(out / TRAIN_DIR, train_ids, images, pick_t, link)
    kinds_v = _sync_folder(out / VAL_DIR, val_ids, images, pick_v, link)
    _write_if_changed(out / TRAIN_CSV, _csv_text(
        ["id", "boneage", "male"],
        [(i, int(a), "True" if m else "False") for i, a, m in zip(train_ids, age_t, male_t)]))
    _write_if_changed(out / VAL_CSV, _csv_text(
        ["Image ID", "male", "Bone Age (months)"],
        [(i, "True" if m else "False", int(a)) for i, a, m in zip(val_ids, age_v, male_v)]))
    links = {k: kinds_t[k] + kinds_v[k] for k in kinds_t}
    return {**summary, "out": str(out), "links": links,
            "male_share": float(np.mean(male_t)), "age_range": [int(age_t.min()), int(age_t.max())]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12611, help="training images (the real download: 12611)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created; reruns are fine)")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of full-resolution originals")
    ap.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="real Kaggle-layout labels to resample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=int, default=None, help="validation images (default: n x 1425/12611)")
    ap.add_argument("--link", choices=("auto", "hard", "sym"), default="auto",
                    help="hard links (auto: when on the same filesystem) or symlinks")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        res = build(args.n, args.out, source=args.source, labels=args.labels, seed=args.seed,
                    n_val=args.val, link=args.link)
    except (ScaleDatasetError, OSError) as exc:
        print(f"make_scale_dataset: {exc}", file=sys.stderr)
        return 2
    print(f"scale dataset in {res['out']}: {res['n_train']} training + {res['n_val']} validation images "
          f"linked to {res['originals']} originals ({res['links']['hard']} hard, {res['links']['sym']} symbolic links), "
          f"{res['male_share']:.0%} male, ages {res['age_range'][0]}-{res['age_range'][1]} months, "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
