"""Unsupervised structure in CNN embeddings: UMAP maps, k-means clusters, and how well
the clusters follow sex or bone age.

``EmbeddingClusterer`` is a scikit-learn style estimator (``fit`` returns self, learned
attributes end in ``_``, nothing happens in ``__init__``): standardise, optional PCA,
a 2-D UMAP map, and k-means twice, once on the map and once on the full (standardised,
PCA-reduced) embedding, so a conclusion never rests on the plotting projection alone.
The UMAP coordinates, the slow part, are stored on disk keyed by (embedding key, the
parameters that change them) when ``fit`` is given a ``cache_key``. The parameters a user
chooses (k, PCA, UMAP neighbours and min distance, metric, seed) are declared once, with
their defaults, bounds and help, in ``ClusterConfig`` (``h2a.analysis.cluster_config``);
``cluster_embeddings(emb, config)`` is the one call the CLI, the jobs and the studies make.

``cluster_scores`` judges a labelling against sex (adjusted Rand index, normalised mutual
information, purity with its chance baseline) and bone age (per-cluster distribution,
share of variance explained); ``cluster_verdict`` turns those figures into the one answer
the page, the CLI and a report give ("the clusters follow sex / age / both / neither"),
with its thresholds defined here only; ``sweep_k`` gives the elbow and silhouette curves.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from h2a.analysis.cluster_config import FOLLOWS_FROM, ClusterConfig
from h2a.progress import ProgressFn, report
from h2a.settings import get_settings

__all__ = ["ClusterConfig", "EmbeddingClusterer", "cluster_embeddings", "cluster_scores", "cluster_verdict",
           "purity", "sweep_k", "axis_correlations", "umap_cache_dir", "STRENGTH_LEVELS", "FOLLOWS_FROM"]

UMAP_VERSION = 1
_DEFAULT = ClusterConfig()  # the estimator's defaults are the declared ones
SILHOUETTE_SAMPLE = 4000  # silhouette is O(n^2): score a fixed random sample beyond this


# ---------------------------------------------------------------- scores

def _known_sex(labels: np.ndarray, male: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    male = np.asarray(male, dtype=float)
    ok = np.isfinite(male)
    return np.asarray(labels)[ok], male[ok].astype(int)


def purity(labels: Sequence[int], truth: Sequence[int]) -> float:
    """Share of items whose cluster's majority class is their own class."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    if len(labels) == 0:
        return float("nan")
    table = pd.crosstab(labels, truth)
    return float(table.max(axis=1).sum() / len(labels))


def cluster_scores(labels: Sequence[int], male: Sequence[float], boneage: Sequence[float] | None = None) -> dict:
    """How a clustering relates to sex and bone age.

    ``male``: 1/0 (NaN or None for unknown, left out of the sex scores); ``boneage`` in
    months (NaN allowed). Returns ``n``, ``k``, ``ari_sex``, ``nmi_sex``, ``purity_sex``,
    ``purity_baseline`` (the majority share: what one big cluster scores), ``boneage_eta2``
    (share of bone-age variance explained by the clusters) and ``clusters``: one dict per
    cluster with size, share male, bone-age mean/sd/min/max.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    male_f = pd.array(male, dtype="Float64").to_numpy(dtype=float, na_value=np.nan)
    age = np.full(len(labels), np.nan) if boneage is None else np.asarray(boneage, dtype=float)
    lab_s, sex = _known_sex(labels, male_f)
    out: dict = {"n": int(len(labels)), "k": int(len(np.unique(labels))), "n_sex_known": int(len(sex))}
    if len(sex) and len(np.unique(sex)) > 1:
        out.update(
            ari_sex=float(adjusted_rand_score(sex, lab_s)),
            nmi_sex=float(normalized_mutual_info_score(sex, lab_s)),
            purity_sex=purity(lab_s, sex),
            purity_baseline=float(max(sex.mean(), 1 - sex.mean())),
        )
    else:
        out.update(ari_sex=None, nmi_sex=None, purity_sex=None, purity_baseline=None)
    ok = np.isfinite(age)
    if ok.sum() > 1 and age[ok].var() > 0:
        grand = age[ok].mean()
        between = sum((labels[ok] == c).sum() * (age[ok][labels[ok] == c].mean() - grand) ** 2
                      for c in np.unique(labels[ok]))
        out["boneage_eta2"] = float(between / ((age[ok] - grand) ** 2).sum())
    else:
        out["boneage_eta2"] = None
    clusters = []
    for c in np.unique(labels):
        m = labels == c
        s = male_f[m]
        a = age[m][np.isfinite(age[m])]
        clusters.append({
            "cluster": int(c),
            "size": int(m.sum()),
            "share_male": float(np.nanmean(s)) if np.isfinite(s).any() else None,
            "boneage_mean": float(a.mean()) if len(a) else None,
            "boneage_sd": float(a.std()) if len(a) > 1 else None,
            "boneage_min": float(a.min()) if len(a) else None,
            "boneage_max": float(a.max()) if len(a) else None,
        })
    out["clusters"] = clusters
    return out


# ---------------------------------------------------------------- verdict

# How strongly a clustering follows a label, by the upper bound of each band. Sex is judged
# by the adjusted Rand index (0 = chance, 1 = the clusters are the sexes), bone age by eta
# squared (share of its variance the clusters explain; random clusters give ~(k-1)/n). One
# scale for both: a k=2 median cut of a normal age distribution reaches eta2 = 2/pi = 0.64,
# so "largely" (>= 0.5) is near the best two clusters can do for age, as ARI 0.5 is for sex.
STRENGTH_LEVELS: tuple[tuple[float, str], ...] = (
    (0.05, "hardly at all"),
    (0.2, "a little"),
    (0.5, "partly"),
    (float("inf"), "largely"),
)


def _strength(value: float | None) -> str | None:
    if value is None or not np.isfinite(value):
        return None
    return next(label for bound, label in STRENGTH_LEVELS if value < bound)


def _best(scores: dict, key: str) -> tuple[float | None, str | None]:
    """The larger figure of the map's and the full embedding's clustering, and where it is.

    The larger one, because a structure k-means finds in either space is there; the page
    and the CLI show both figures next to the verdict."""
    found = [(scores.get(key), "map"), ((scores.get("full") or {}).get(key), "full embedding")]
    found = [(float(v), where) for v, where in found if v is not None and np.isfinite(v)]
    return max(found) if found else (None, None)


def cluster_verdict(scores: dict) -> dict:
    """Do the clusters follow sex, bone age, both or neither? From ``EmbeddingClusterer.scores``
    (or ``cluster_scores``, the map only).

    Returns ``follows`` ('sex' | 'age' | 'both' | 'neither' | 'unknown' when neither
    figure exists, e.g. no labels), ``sex`` and ``age`` (figure, where it came from, its
    strength label), ``reason`` (one plain sentence) and the ``thresholds`` used.
    """
    ari, ari_where = _best(scores, "ari_sex")
    eta2, eta2_where = _best(scores, "boneage_eta2")
    sex = {"ari": ari, "space": ari_where, "strength": _strength(ari),
           "follows": ari is not None and ari >= FOLLOWS_FROM}
    age = {"eta2": eta2, "space": eta2_where, "strength": _strength(eta2),
           "follows": eta2 is not None and eta2 >= FOLLOWS_FROM}
    if ari is None and eta2 is None:
        follows = "unknown"
    elif sex["follows"] and age["follows"]:
        follows = "both"
    else:
        follows = "sex" if sex["follows"] else "age" if age["follows"] else "neither"
    parts = []
    if ari is not None:
        parts.append(f"sex {sex['strength']} (ARI {ari:.2f}, {ari_where})")
    if eta2 is not None:
        parts.append(f"bone age {age['strength']} ({100 * eta2:.0f}% of its variance explained, {eta2_where})")
    k = scores.get("k")
    lead = {"sex": "The clusters follow sex", "age": "The clusters follow bone age",
            "both": "The clusters follow both sex and bone age", "neither": "The clusters follow neither sex nor bone age",
            "unknown": "No verdict: neither sex nor bone age is known for these images"}[follows]
    reason = lead + (f" (k = {k})" if k else "") + (": " + "; ".join(parts) if parts else "") + "."
    return {"follows": follows, "sex": sex, "age": age, "reason": reason, "k": k,
            "thresholds": {"levels": [[None if np.isinf(b) else b, label] for b, label in STRENGTH_LEVELS],
                           "follows_from": FOLLOWS_FROM}}


def silhouette(X: np.ndarray, labels: np.ndarray, random_state: int = 0) -> float | None:
    """Silhouette (on a fixed random sample of at most SILHOUETTE_SAMPLE points)."""
    from sklearn.metrics import silhouette_score

    k = len(np.unique(labels))
    if k < 2 or k >= len(labels):
        return None
    sample = min(len(labels), SILHOUETTE_SAMPLE)
    return float(silhouette_score(X, labels, sample_size=sample if sample < len(labels) else None,
                                  random_state=random_state))


def axis_correlations(coords: np.ndarray, values: Sequence[float]) -> list[float | None]:
    """Spearman correlation of each column of ``coords`` with ``values`` (NaN rows left out)."""
    from scipy.stats import spearmanr

    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    out: list[float | None] = []
    for j in range(coords.shape[1]):
        if ok.sum() < 3 or np.ptp(v[ok]) == 0 or np.ptp(coords[ok, j]) == 0:
            out.append(None)
        else:
            out.append(float(spearmanr(coords[ok, j], v[ok]).statistic))
    return out


def sweep_k(X: np.ndarray, ks: Sequence[int] = range(2, 11), random_state: int = 0,
            progress: ProgressFn | None = None) -> pd.DataFrame:
    """k-means for each k: inertia (for the elbow) and silhouette (higher is better)."""
    from sklearn.cluster import KMeans

    rows = []
    ks = [int(k) for k in ks if 2 <= int(k) < len(X)]
    for i, k in enumerate(ks, 1):
        km = KMeans(n_clusters=k, n_init=4, random_state=random_state).fit(X)
        rows.append({"k": k, "inertia": float(km.inertia_), "silhouette": silhouette(X, km.labels_, random_state)})
        report(progress, i, len(ks), f"k-means sweep k={k}")
    return pd.DataFrame(rows, columns=["k", "inertia", "silhouette"])


# ---------------------------------------------------------------- the estimator

def umap_cache_dir(root: Path | None = None) -> Path:
    return Path(root) if root is not None else get_settings().cache_dir / "umap"


class EmbeddingClusterer(BaseEstimator):
    """Standardise -> optional PCA -> UMAP (2-D) -> k-means, plus k-means on the full space.

    Learned attributes: ``scaler_``, ``pca_`` (None when ``pca`` is 0/None),
    ``features_`` (the standardised/PCA representation clustered "in full"),
    ``embedding_`` (N, 2) UMAP map, ``labels_`` (k-means on the map), ``labels_full_``
    (k-means on ``features_``), ``kmeans_``, ``kmeans_full_``, ``umap_from_cache_``.
    """

    def __init__(self, k: int = _DEFAULT.k, *, standardize: bool = True, pca: int | None = _DEFAULT.pca,
                 n_neighbors: int = _DEFAULT.n_neighbors, min_dist: float = _DEFAULT.min_dist,
                 metric: str = _DEFAULT.metric, random_state: int = _DEFAULT.seed) -> None:
        self.k = k
        self.standardize = standardize
        self.pca = pca
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.random_state = random_state

    @classmethod
    def from_config(cls, config: ClusterConfig, *, standardize: bool = True) -> EmbeddingClusterer:
        """The estimator for these settings (``ClusterConfig.seed`` is ``random_state``)."""
        return cls(config.k, standardize=standardize, pca=config.pca, n_neighbors=config.n_neighbors,
                   min_dist=config.min_dist, metric=config.metric, random_state=config.seed)

    def cluster_config(self) -> ClusterConfig:
        """The settings as a ClusterConfig: its declarations check them (ValueError naming each)."""
        return ClusterConfig.from_dict({"k": self.k, "pca": self.pca or 0, "n_neighbors": self.n_neighbors,
                                        "min_dist": self.min_dist, "metric": self.metric,
                                        "seed": self.random_state})

    # -- pieces ------------------------------------------------------------------
    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) < 3:
            raise ValueError(f"need a 2-D array with at least 3 rows, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("embeddings contain NaN or infinite values")
        self.cluster_config()  # the declared types and ranges
        if not int(self.k) < len(X):
            raise ValueError(f"k must be from 2 to {len(X) - 1} for {len(X)} points, got {self.k}")
        return X

    def umap_params(self, n_rows: int) -> dict:
        """The parameters that change the UMAP map (part of its cache key)."""
        return {"v": UMAP_VERSION, "standardize": bool(self.standardize), "pca": int(self.pca or 0),
                "n_neighbors": int(min(self.n_neighbors, n_rows - 1)), "min_dist": float(self.min_dist),
                "metric": str(self.metric), "random_state": int(self.random_state)}

    def _umap(self, Z: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs=1 with random_state, spectral init notes
            import umap

            reducer = umap.UMAP(n_components=2, n_neighbors=int(min(self.n_neighbors, len(Z) - 1)),
                                min_dist=float(self.min_dist), metric=self.metric,
                                random_state=int(self.random_state), low_memory=True)
            return reducer.fit_transform(Z).astype(np.float32)

    def transform_features(self, X: np.ndarray) -> np.ndarray:
        """Apply the fitted standardisation and PCA."""
        Z = self.scaler_.transform(X) if self.scaler_ is not None else np.asarray(X, np.float32)
        return (self.pca_.transform(Z) if self.pca_ is not None else Z).astype(np.float32)

    # -- fit -----------------------------------------------------------------------
    def fit(self, X: np.ndarray, y=None, *, cache_key: str | None = None, cache_root: Path | None = None,
            progress: ProgressFn | None = None) -> "EmbeddingClusterer":
        """Fit on embeddings X (N, D). With ``cache_key`` (e.g. ``Embeddings.key``) the UMAP
        map is loaded from / stored to disk under that key and the parameters."""
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        X = self._check(X)
        report(progress, 0, 4, "standardising and PCA")
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        Z = self.scaler_.transform(X) if self.scaler_ is not None else X
        n_comp = min(int(self.pca or 0), Z.shape[0], Z.shape[1])
        self.pca_ = PCA(n_components=n_comp, random_state=self.random_state).fit(Z) if n_comp >= 2 else None
        self.features_ = (self.pca_.transform(Z) if self.pca_ is not None else Z).astype(np.float32)
        report(progress, 1, 4, "UMAP map")
        self.umap_from_cache_ = False
        path = None
        if cache_key is not None:
            params = self.umap_params(len(X))
            digest = hashlib.sha1(json.dumps({"emb": cache_key, "n": len(X), **params},
                                             sort_keys=True).encode()).hexdigest()[:16]
            path = umap_cache_dir(cache_root) / f"{digest}.npy"
            try:
                coords = np.load(path, allow_pickle=False)
                if coords.shape == (len(X), 2):
                    self.embedding_ = coords
                    self.umap_from_cache_ = True
            except (OSError, ValueError):
                pass
        if not self.umap_from_cache_:
            self.embedding_ = self._umap(self.features_)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:6]}.npy")
                np.save(tmp, self.embedding_, allow_pickle=False)
                os.replace(tmp, path)
        report(progress, 2, 4, "k-means on the map")
        self.kmeans_ = KMeans(n_clusters=int(self.k), n_init=10, random_state=self.random_state).fit(self.embedding_)
        self.labels_ = self.kmeans_.labels_.astype(int)
        report(progress, 3, 4, "k-means on the full embedding")
        self.kmeans_full_ = KMeans(n_clusters=int(self.k), n_init=10,
                                   random_state=self.random_state).fit(self.features_)
        self.labels_full_ = self.kmeans_full_.labels_.astype(int)
        report(progress, 4, 4, "clustering done")
        return self

    def fit_predict(self, X: np.ndarray, y=None, **kw) -> np.ndarray:
        return self.fit(X, **kw).labels_

    # -- judging -------------------------------------------------------------------
    def scores(self, male: Sequence[float], boneage: Sequence[float] | None = None) -> dict:
        """Scores of both clusterings: the map's at the top level, the full space's in 'full'."""
        out = cluster_scores(self.labels_, male, boneage)
        out["silhouette"] = silhouette(self.embedding_, self.labels_, self.random_state)
        out["space"] = "umap-2d"
        if boneage is not None:
            out["umap_spearman_boneage"] = axis_correlations(self.embedding_, boneage)
            out["umap_spearman_male"] = axis_correlations(self.embedding_, male)
        full = cluster_scores(self.labels_full_, male, boneage)
        full["silhouette"] = silhouette(self.features_, self.labels_full_, self.random_state)
        full["space"] = f"full embedding ({self.features_.shape[1]}-d{' after PCA' if self.pca_ is not None else ''})"
        out["full"] = full
        from sklearn.metrics import adjusted_rand_score

        out["ari_map_vs_full"] = float(adjusted_rand_score(self.labels_, self.labels_full_))
        out["params"] = {"k": int(self.k), "pca": int(self.pca or 0), "standardize": bool(self.standardize),
                         "n_neighbors": int(self.n_neighbors), "min_dist": float(self.min_dist),
                         "metric": self.metric, "seed": int(self.random_state)}
        out["umap_from_cache"] = bool(self.umap_from_cache_)
        out["verdict"] = cluster_verdict(out)
        return out

    def frame(self, ids: Sequence[str], male: Sequence[float], boneage: Sequence[float]) -> pd.DataFrame:
        """One row per image: id, UMAP x/y, both cluster labels, sex, bone age."""
        male_f = pd.array(male, dtype="Float64").to_numpy(dtype=float, na_value=np.nan)
        return pd.DataFrame({
            "id": [str(i) for i in ids],
            "umap_x": self.embedding_[:, 0], "umap_y": self.embedding_[:, 1],
            "cluster": self.labels_, "cluster_full": self.labels_full_,
            "male": male_f, "sex": np.where(np.isnan(male_f), "unknown", np.where(male_f > 0.5, "male", "female")),
            "boneage": np.asarray(boneage, dtype=float),
        })


# ---------------------------------------------------------------- one call for the CLI and the page

def cluster_embeddings(emb, config: ClusterConfig | None = None, *, standardize: bool = True,
                       progress: ProgressFn | None = None) -> tuple[EmbeddingClusterer, pd.DataFrame, dict]:
    """Fit an EmbeddingClusterer with ``config`` (None: the declared defaults) on ``Embeddings``
    (UMAP cached on disk under its key).

    Returns (fitted clusterer, per-image frame, scores). The scores carry the embedding's
    source, key and whether it came from disk.
    """
    est = EmbeddingClusterer.from_config(config or ClusterConfig(), standardize=standardize)
    est.fit(emb.X, cache_key=emb.key, progress=progress)
    scores = est.scores(emb.male, emb.boneage)
    scores["embedding"] = {"source": emb.source, "key": emb.key, "dim": emb.dim, "from_cache": emb.from_cache,
                           "dataset": emb.info.get("dataset"), "preprocess": emb.info.get("preprocess")}
    frame = est.frame(emb.ids, emb.male, emb.boneage)
    if "split" in emb.meta:
        frame["split"] = emb.meta["split"].to_numpy()
    return est, frame, scores
