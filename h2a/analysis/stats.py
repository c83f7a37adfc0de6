"""Population statistics of a dataset: who is in it, how the splits compare, what the
images look like. Shared by the Population page and ``python -m h2a stats``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from h2a.data.datasets import Dataset, scan_headers
from h2a.progress import ProgressFn, report
from h2a.data.thumbs import get_thumbnail

SEX_LABELS = {True: "male", False: "female"}
INTENSITY_COLUMNS = ["id", "sex", "boneage", "mean", "std", "p05", "p95", "range"]


def sex_label(male: pd.Series) -> pd.Series:
    """'male' / 'female' / 'unknown' strings for display and grouping."""
    return male.astype("boolean").map({True: "male", False: "female"}).fillna("unknown").astype(str)


def _summary(values: pd.Series) -> dict[str, float | None]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return {"n": 0, "mean": None, "median": None, "std": None, "min": None, "max": None}
    return {
        "n": int(v.size),
        "mean": round(float(v.mean()), 3),
        "median": float(v.median()),
        "std": round(float(v.std(ddof=1)), 3) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def age_bin_table(meta: pd.DataFrame, width: int = 12) -> pd.DataFrame:
    """Counts per bone-age bin (rows, e.g. '0-11') x sex (columns)."""
    labelled = meta[meta["boneage"].notna()]
    if labelled.empty:
        return pd.DataFrame(columns=["bin", "female", "male", "total"])
    start = (labelled["boneage"] // width * width).astype(int)
    table = pd.crosstab(start, sex_label(labelled["male"])).reindex(columns=["female", "male"], fill_value=0)
    full = np.arange(0, int(start.max()) + width, width)
    table = table.reindex(full, fill_value=0)
    table["total"] = table.sum(axis=1)
    table.index = [f"{a}-{a + width - 1}" for a in table.index]
    table.index.name = "bin"
    return table.reset_index()


def split_table(meta: pd.DataFrame) -> pd.DataFrame:
    """One row per split: size, % male, bone-age mean/sd/median, images present."""
    rows = []
    for split, part in meta.groupby("split", sort=False):
        male = part["male"].astype("boolean")
        ages = part["boneage"].dropna()
        rows.append({
            "split": split,
            "rows": len(part),
            "images": int(part["path"].notna().sum()),
            "% male": round(100.0 * float(male.mean()), 1) if male.notna().any() else None,
            "bone age mean": round(float(ages.mean()), 1) if len(ages) else None,
            "bone age sd": round(float(ages.std()), 1) if len(ages) > 1 else None,
            "bone age median": float(ages.median()) if len(ages) else None,
        })
    return pd.DataFrame(rows)


def compute_stats(
    ds: Dataset, headers: pd.DataFrame | None = None, *, progress: ProgressFn | None = None
) -> dict:
    """The JSON-able summary behind ``stats --json`` and the page's headline numbers."""
    if headers is None:
        headers = scan_headers(ds, progress=progress)
    meta = ds.meta
    present = meta["path"].notna() & headers["error"].isna()
    male = meta["male"].astype("boolean")
    bins = age_bin_table(meta)
    return {
        "dataset": str(ds.root),
        "synthetic": ds.synthetic,
        "fingerprint": ds.fingerprint,
        "n_rows": int(len(meta)),
        "n_images": int(present.sum()),
        "n_missing_images": int(meta["path"].isna().sum()),
        "n_unreadable_images": int((meta["path"].notna() & headers["error"].notna()).sum()),
        "n_male": int((male == True).sum()),  # noqa: E712 (nullable boolean)
        "n_female": int((male == False).sum()),  # noqa: E712
        "splits": {s: int(n) for s, n in meta["split"].value_counts().items()},
        "label_encodings": dict(ds.encodings),  # label CSV -> the text encoding it was read with
        "boneage_months": _summary(meta["boneage"]),
        "by_sex": {
            "male": _summary(meta.loc[male == True, "boneage"]),  # noqa: E712
            "female": _summary(meta.loc[male == False, "boneage"]),  # noqa: E712
        },
        "age_bins": {
            "width_months": 12,
            "bins": bins["bin"].tolist(),
            "male": [int(x) for x in bins.get("male", [])],
            "female": [int(x) for x in bins.get("female", [])],
        },
        "width": _summary(headers.loc[present, "width"]),
        "height": _summary(headers.loc[present, "height"]),
        "formats": {str(k): int(v) for k, v in headers.loc[present, "format"].value_counts().items()},
        "bit_depths": {str(k): int(v) for k, v in headers.loc[present, "bit_depth"].value_counts().items()},
        "problems": [p.to_dict() for p in ds.problems],
    }


def intensity_summary(
    ds: Dataset, n: int = 200, seed: int = 0, side: int = 128, progress: ProgressFn | None = None,
    thumbs_root: Path | None = None,
) -> pd.DataFrame:
    """Per-image intensity facts on a random sample (decoding every image is not needed
    to see exposure and contrast spread): mean, sd, 5th/95th percentile, dynamic range.

    The images are read as ``side``-px thumbnails through the on-disk thumbnail cache
    (``h2a.data.thumbs``): a full-resolution radiograph is decoded once, ever, and the
    gallery and every later summary reuse it. The 8-bit thumbnail moves each figure by
    at most 1/255 of the range, far below the spread between images being shown.
    """
    rows = ds.with_images()
    if rows.empty:
        return pd.DataFrame(columns=INTENSITY_COLUMNS)
    sample = rows.sample(n=min(n, len(rows)), random_state=seed)
    out = []
    for i, row in enumerate(sample.itertuples(), 1):
        thumb = get_thumbnail(row.path, side, root=thumbs_root)
        report(progress, i, len(sample), "measuring intensities")
        if not thumb.ok:
            continue
        img = thumb.image.astype(np.float32) / 255.0
        p05, p95 = np.percentile(img, [5, 95])
        out.append({
            "id": row.id, "sex": SEX_LABELS.get(row.male, "unknown") if pd.notna(row.male) else "unknown",
            "boneage": row.boneage, "mean": float(img.mean()), "std": float(img.std()),
            "p05": float(p05), "p95": float(p95), "range": float(p95 - p05),
        })
    return pd.DataFrame(out, columns=INTENSITY_COLUMNS)


def select_images(frame: pd.DataFrame, sex: str | None, age_range: tuple[float, float]) -> pd.DataFrame:
    """The rows of one sex ('female' / 'male'; anything else: both) whose bone age lies in
    ``age_range`` (months, inclusive). Rows without a bone age are kept: a test list has none,
    and hiding every image of it would look like an empty dataset. The gallery and the
    preprocessing preview's random pick filter the same way."""
    sel = frame[frame["sex"] == sex] if sex in ("female", "male") else frame
    return sel[sel["boneage"].between(*age_range) | sel["boneage"].isna()]


def format_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per file format, colour mode and bit depth (unreadable sizes left out)."""
    sized = frame[frame["width"].notna()]
    return sized.groupby(["format", "mode", "bit_depth"], dropna=False).size().rename("images").reset_index()


def problem_kinds(problems: pd.DataFrame) -> pd.DataFrame:
    """How many problems of each kind: the message up to its colon, numbers folded to N, so
    'row 12: bad age' and 'row 40: bad age' count as one kind."""
    kinds = problems["problem"].str.replace(r"[0-9]+", "N", regex=True).str.split(":").str[0]
    return kinds.value_counts().rename_axis("kind").rename("count").reset_index()
