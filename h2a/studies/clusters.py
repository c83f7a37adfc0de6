"""The ``clusters`` study: does clustering CNN embeddings group children by sex (or by age)?

The seed question, answered for three kinds of embedding at once: the ImageNet-pretrained
backbone (what the image looks like to a generic network), a bone-age run (trained on
age) and a sex run (trained on sex). Each is embedded with the existing core
(``h2a.analysis.embeddings``, cached on disk), mapped with UMAP and clustered with k-means,
on the map and on the full embedding (``h2a.analysis.clustering.cluster_embeddings``), and
the clusters are scored against sex and against 24-month age bands with the adjusted Rand
index (0 = chance, 1 = the clusters are the classes) and normalised mutual information.

Sex scores come from ``cluster_scores``; it has no ARI/NMI against age bands (it judges age
by the share of variance explained), so ``age_band_scores`` adds them here, with the one
band rule (``h2a.inference.metrics.age_band_labels``).

Core module: no streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from h2a.analysis.cluster_config import ClusterConfig
from h2a.analysis.clustering import cluster_embeddings
from h2a.analysis.embeddings import PRETRAINED, compute_embeddings
from h2a.data.datasets import load_dataset
from h2a.inference.metrics import age_band_labels
from h2a.progress import ProgressFn, report
from h2a.run import Run

__all__ = ["AGE_BAND_MONTHS", "IMAGES", "SPACES", "age_band_scores", "clusters_study", "run_holdout_ids",
           "source_spec"]

AGE_BAND_MONTHS = 24
# (row label, where the labels live on the fitted clusterer, where cluster_scores put them)
SPACES: tuple[tuple[str, str], ...] = (("umap", "labels_"), ("full", "labels_full_"))
IMAGES = ("holdout", "all")  # which images are clustered (see clusters_study)


def age_band_scores(labels: Sequence[int], boneage: Sequence[float], width: int = AGE_BAND_MONTHS) -> dict:
    """ARI and NMI of a clustering against bone-age bands of ``width`` months (NaN ages left out).

    Returns ``ari_age_band``, ``nmi_age_band`` (None with fewer than two bands present),
    ``n_age_known`` and ``n_age_bands``."""
    labels = np.asarray(labels)
    age = np.asarray(boneage, dtype=float)
    ok = np.isfinite(age)
    bands = age_band_labels(age[ok], width) if ok.any() else np.array([], dtype=str)
    out: dict[str, Any] = {"n_age_known": int(ok.sum()), "n_age_bands": len(np.unique(bands))}
    if out["n_age_bands"] < 2:
        return {**out, "ari_age_band": None, "nmi_age_band": None}
    return {**out, "ari_age_band": float(adjusted_rand_score(bands, labels[ok])),
            "nmi_age_band": float(normalized_mutual_info_score(bands, labels[ok]))}


def source_spec(source: str | Path | None) -> str:
    """What ``compute_embeddings`` takes for a source: 'pretrained' for None (ImageNet), else the run."""
    return PRETRAINED if source is None or str(source) == PRETRAINED else str(source)


def _rows_for(name: str, emb, est, scores: dict) -> list[dict]:
    """One row per space (UMAP map, full embedding) for one embedding source."""
    rows = []
    for space, attr in SPACES:
        sex = scores if space == "umap" else scores["full"]
        age = age_band_scores(getattr(est, attr), emb.boneage)
        rows.append({
            "source": name, "embedding": emb.source, "space": space, "n": sex["n"], "k": sex["k"],
            "n_sex_known": sex["n_sex_known"], "n_age_known": age["n_age_known"], "n_age_bands": age["n_age_bands"],
            "ari_sex": sex["ari_sex"], "nmi_sex": sex["nmi_sex"],
            "ari_age_band": age["ari_age_band"], "nmi_age_band": age["nmi_age_band"],
            "purity_sex": sex["purity_sex"], "purity_baseline": sex["purity_baseline"],
            "boneage_eta2": sex["boneage_eta2"], "dim": emb.dim, "error": None,
        })
    rows[0]["verdict"] = scores["verdict"]["reason"]
    rows[1]["verdict"] = scores["verdict"]["reason"]
    return rows


def _error_row(name: str, source: str, why: str) -> dict:
    return {"source": name, "embedding": source, "space": None, "n": 0, "k": None, "n_sex_known": 0,
            "n_age_known": 0, "n_age_bands": 0, "ari_sex": None, "nmi_sex": None, "ari_age_band": None,
            "nmi_age_band": None, "purity_sex": None, "purity_baseline": None, "boneage_eta2": None, "dim": None,
            "error": why, "verdict": f"{name}: not clustered ({why})"}


def _dataset(data: Any):
    """A loaded Dataset from a folder (or a Dataset as is)."""
    if hasattr(data, "meta") and hasattr(data, "fingerprint"):
        return data
    return load_dataset(Path(data))


def run_holdout_ids(run: str | Path) -> set[str] | None:
    """The ids a finished run held out (never trained or validated on); None when it kept none."""
    ids = Run.open(run).splits.get("holdout")
    return {str(i) for i in ids} if ids else None


def _images(ds, sources: Mapping[str, str | Path | None], images: str):
    """(dataset to embed, how it was chosen): the images every run source held out, or all.

    A run's embedding of its own training images is flattered (it has learnt those hands),
    so by default only images no run saw are clustered; ImageNet embeds the same images, so
    the three sources are compared on one set."""
    if images not in IMAGES:
        raise ValueError(f"images must be one of {', '.join(IMAGES)}, got {images!r}")
    if images == "all":
        return ds, "all images"
    held: set[str] | None = None
    for source in sources.values():
        if source_spec(source) == source_spec(None):
            continue
        try:
            ids = run_holdout_ids(source)
        except (FileNotFoundError, OSError):
            continue  # reported as that source's error row
        if ids is None:
            return ds, "all images (a run kept no held-out images)"
        held = ids if held is None else held & ids
    if held is None:
        return ds, "all images (no run source)"
    mask = ds.meta["id"].astype(str).isin(held)
    if not mask.any():
        return ds, "all images (the runs' held-out images are not in this dataset)"
    subset = replace(ds, meta=ds.meta[mask].reset_index(drop=True), _fingerprint=None, _paths=None)
    return subset, "images every run held out"


def clusters_study(data: Any, sources: Mapping[str, str | Path | None], config: ClusterConfig | None = None, *,
                   images: str = "holdout", progress: ProgressFn | None = None, **settings: Any) -> dict:
    """Cluster each source's embeddings of ``data`` and score the clusters against sex and age band.

    ``data``: a dataset folder (or a loaded Dataset); ``sources``: display name -> None for
    the ImageNet-pretrained EfficientNet-Lite0, or a run folder / name (a bone-age run, a sex
    run). ``images``: 'holdout' (default) clusters only the images every run source held
    out, the fair test of a trained embedding (all images when no run source kept a held-out
    split); 'all' every image. ``config`` (None: the declared defaults), changed by
    ``settings`` (ClusterConfig field names, e.g. ``k=3, seed=1``), is how every source is
    mapped and clustered. Each source embeds with its own preprocessing; embeddings and
    UMAP maps are cached on disk.

    Returns ``{"rows", "k", "seed", "config", "data", "dataset", "images", "n_images", "band_months"}``;
    ``rows`` has one row
    per source and space ('umap' = k-means on the 2-D map, 'full' = on the standardised,
    PCA-reduced embedding) with ``n``, ``ari_sex``, ``nmi_sex``, ``ari_age_band``,
    ``nmi_age_band``, purity, eta squared and the plain verdict. A source that cannot be
    used (no such run, an unfinished run) gets one row with ``error`` and the others still
    run; an unusable dataset raises (DatasetError); bad settings raise ValueError.
    """
    if not sources:
        raise ValueError("no embedding source given: name at least one (None = ImageNet weights)")
    cfg = replace(config or ClusterConfig(), **settings)
    ds, chosen = _images(_dataset(data), sources, images)
    rows: list[dict] = []
    n_images = None
    items = list(sources.items())
    for i, (name, source) in enumerate(items):
        spec = source_spec(source)
        report(progress, i, len(items), f"embedding images with {name}")
        try:
            emb = compute_embeddings(ds, spec, progress=None)
            report(progress, i, len(items), f"UMAP and k-means for {name}")
            est, _, scores = cluster_embeddings(emb, cfg)
        except (FileNotFoundError, ValueError, KeyError) as exc:  # a missing/unfinished run, too few images
            rows.append(_error_row(name, spec, str(exc)))
            continue
        n_images = len(emb) if n_images is None else n_images
        rows.extend(_rows_for(name, emb, est, scores))
    report(progress, len(items), len(items), "clusters scored")
    return {"rows": rows, "k": cfg.k, "seed": cfg.seed, "config": cfg.to_dict(),
            "data": str(getattr(ds, "root", data)), "dataset": ds.name, "images": chosen, "n_images": n_images, "band_months": AGE_BAND_MONTHS}
