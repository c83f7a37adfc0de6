"""Out-of-distribution (OOD) check: does this image look like the run's training images?

A regression model answers for anything, so the answer needs a measure of whether the
input resembles what the model learned from. The image's embedding (pooled
``forward_features``, ``H2AModel.embed``, of the unaugmented copy, standardised per
feature) is compared with embeddings of a seeded sample of the run's training images:
the mean distance to the k nearest training images. The score is that distance divided
by a threshold CALIBRATED on the run's own validation images: the split-conformal
``OOD_QUANTILE`` quantile of their distances (the ceil((n+1) q)-th smallest), so a new
image from the same source as the validation images exceeds it with probability at most
1 - q (1% nominal; the issue's budget is 2% of real held-out hands). A score above 1 adds
an ``out_of_distribution`` alert. With too few validation images the training images'
leave-one-out distances stand in (and the file says so). ``bench/bench_ood.py`` measures
the flag rate on held-out hands and the detection rate on non-hand images.

The reference (embeddings, threshold, the quantile and which images calibrated it) is
computed once per run and cached in the run folder as ``ood.npz`` (keyed by model.pt's
size and mtime and ``OOD_VERSION``, so a retrained run or a new calibration rule gets a
fresh one).

Core module: no streamlit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from h2a.data.imageio import ImageReadError, read_image
from h2a.data.preprocess import prepare
from h2a.data.transforms import array_input
from h2a.run import MODEL, atomic_write_bytes, weights_file
from h2a.inference.loading import LoadedRun
from h2a.predict.alerts import Alert, Code
from h2a.data.cache import open_cache
from h2a.data.datasets import load_dataset

__all__ = [
    "OOD_FILE",
    "OOD_K",
    "OOD_QUANTILE",
    "OOD_SHIPPED",
    "OOD_UNCHECKED",
    "OODReference",
    "build_ood_reference",
    "calibrate_threshold",
    "embed_images",
    "knn_mean",
    "load_ood_reference",
    "ood_alert",
    "pairwise_distances",
    "reference_from_embeddings",
    "reference_images",
]

OOD_FILE = "ood.npz"
OOD_SHIPPED = "ood.safetensors"  # a shipped run's reference (committed, so keyed by nothing: it never goes stale)
OOD_VERSION = 2  # 2: conformal validation quantile, no fixed margin
OOD_K = 5
OOD_QUANTILE = 0.99  # nominal share of in-distribution images NOT flagged
OOD_TRAIN = 1024  # training images in the reference: more make in-distribution distances shorter
OOD_VAL = 512  # validation images calibrating the threshold: the 0.99 quantile needs a few hundred
OOD_MIN_VAL = 20  # fewer validation images than this: calibrate on the training leave-one-out distances

OOD_UNCHECKED = Alert(Code.OOD_UNCHECKED, "the model's training images were not found, so H2A could not check "
                                          "whether this image resembles them")


@dataclass
class OODReference:
    """Standardised training embeddings and the distance threshold for one run."""

    train: np.ndarray  # (n, D) float32, standardised
    mu: np.ndarray  # (D,)
    sd: np.ndarray  # (D,)
    threshold: float
    val_distances: np.ndarray  # the calibration distances (validation, or training leave-one-out)
    k: int = OOD_K
    quantile: float = OOD_QUANTILE
    calibrated_on: str = "validation"  # or "training leave-one-out"

    def distance(self, emb: np.ndarray) -> float:
        z = (np.asarray(emb, np.float32).reshape(-1) - self.mu) / self.sd
        d = np.sqrt(((self.train - z) ** 2).sum(axis=1)) / np.sqrt(z.size)
        k = min(self.k, len(d))
        return float(np.sort(d)[:k].mean())

    def score(self, emb: np.ndarray) -> float:
        """Distance / threshold: above 1 means unlike the training images."""
        return self.distance(emb) / self.threshold


SCORE_TOLERANCE = 1e-6


def ood_alert(score: float) -> Alert | None:
    """The alert for an OOD score (worst over an ensemble), None when in distribution.

    A score at the threshold is in distribution (the threshold is one of the validation
    distances); the tolerance absorbs float noise from recomputing that image's distance.
    """
    if score <= 1.0 + SCORE_TOLERANCE:
        return None
    return Alert(Code.OUT_OF_DISTRIBUTION, (
        f"this image looks unlike the model's training images (embedding distance {score:.1f}x "
        "the in-distribution threshold): the bone age below may be meaningless"))


def _model_key(run_dir: Path) -> str:
    st = (weights_file(run_dir) or run_dir / MODEL).stat()
    return f"{OOD_VERSION}:{st.st_size}:{st.st_mtime_ns}"


def _sample(ids: list, n: int, rng: np.random.Generator) -> list[str]:
    ids = [str(i) for i in ids]
    return [ids[i] for i in sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False))] if ids else []


def _load_prepared(run: LoadedRun, ids: list[str], cache, paths) -> np.ndarray:
    """(n, S, S) uint8 for ``ids``: from the tensor cache when it has them, else decoded."""
    if cache is not None:
        try:
            rows = cache.rows(ids)
            return cache.take(rows[cache.ok[rows]])
        except (KeyError, ValueError):
            pass
    out: list[np.ndarray] = []
    for i in ids:
        p = paths.get(i)
        if not p:
            continue
        try:
            out.append(prepare(read_image(p), run.preprocess))
        except ImageReadError:
            continue
    s = run.preprocess.size
    return np.stack(out) if out else np.zeros((0, s, s), np.uint8)


def reference_images(run: LoadedRun, n_train: int, n_val: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded samples of the run's training and validation images, preprocessed as for the model.

    From the tensor cache when it exists; else only the sampled files are decoded.
    """
    ds = load_dataset(run.meta["dataset"]["path"])
    rng = np.random.default_rng(seed)
    splits = run.meta.get("splits", {})
    want_train = _sample(splits.get("train", []), n_train, rng)
    want_val = _sample(splits.get("validation", []), n_val, rng)
    cache = open_cache(ds, run.preprocess)
    paths = ds.paths_by_id()
    return _load_prepared(run, want_train, cache, paths), _load_prepared(run, want_val, cache, paths)


@torch.no_grad()
def embed_images(run: LoadedRun, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """(n, D) float32 embeddings of (n, S, S) uint8 model inputs, in batches."""
    feats = []
    for i in range(0, len(images), batch):
        x = array_input(images[i:i + batch], run.norm, run.device)
        feats.append(run.model.embed(x).float().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, run.model.num_features), np.float32)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows of a (n, D) and b (m, D) / sqrt(D), without an (n, m, D) array."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    sq = (a64 * a64).sum(1)[:, None] + (b64 * b64).sum(1)[None, :] - 2.0 * a64 @ b64.T
    return np.sqrt(np.maximum(sq, 0.0)) / np.sqrt(a.shape[1])


def knn_mean(dist: np.ndarray, k: int) -> np.ndarray:
    """Per row, the mean of its k smallest distances."""
    k = min(k, dist.shape[1])
    return np.sort(dist, axis=1)[:, :k].mean(axis=1)


def calibrate_threshold(distances: np.ndarray, quantile: float = OOD_QUANTILE) -> float:
    """The split-conformal ``quantile`` of calibration distances: the ceil((n+1) q)-th smallest.

    WHY conformal rather than ``np.quantile``: for a new image exchangeable with the
    calibration images, P(distance > threshold) <= 1 - q holds at any n, where the plain
    quantile of a few hundred images under-covers. With n too small for that rank the
    largest distance is used. Never below 1e-6 (identical embeddings must not divide by zero).
    """
    d = np.sort(np.asarray(distances, np.float64).ravel())
    if d.size == 0:
        raise ValueError("no calibration distances")
    rank = min(int(np.ceil((d.size + 1) * quantile)), d.size)
    return max(float(d[rank - 1]), 1e-6)


def build_ood_reference(run: LoadedRun, n_train: int = OOD_TRAIN, n_val: int = OOD_VAL) -> OODReference | None:
    """Embed samples of the run's own images and calibrate the threshold on its validation
    images; None when the training images are not available."""
    train_u8, val_u8 = reference_images(run, n_train, n_val)
    if len(train_u8) < OOD_K + 2:
        return None
    train = embed_images(run, train_u8)
    val = embed_images(run, val_u8) if len(val_u8) >= OOD_MIN_VAL else None
    return reference_from_embeddings(train, val)


def reference_from_embeddings(train: np.ndarray, val: np.ndarray | None,
                              quantile: float = OOD_QUANTILE) -> OODReference:
    """The reference from raw (n, D) training and (m, D) validation embeddings.

    Standardises on the training embeddings, then calibrates the threshold on the
    validation images' k-NN distances (the training leave-one-out ones when ``val`` is
    None or has fewer than OOD_MIN_VAL rows). Pure numpy, so tests can feed it
    constructed embeddings.
    """
    train = np.asarray(train, np.float32)
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    sd = np.maximum(sd, 0.1 * float(np.median(sd)) + 1e-6).astype(np.float32)
    z = ((train - mu) / sd).astype(np.float32)
    if val is not None and len(val) >= OOD_MIN_VAL:
        zv = (np.asarray(val, np.float32) - mu) / sd
        calib, source = knn_mean(pairwise_distances(zv, z), OOD_K), "validation"
    else:
        pair = pairwise_distances(z, z)
        np.fill_diagonal(pair, np.inf)
        calib, source = knn_mean(pair, OOD_K), "training leave-one-out"
    return OODReference(z, mu.astype(np.float32), sd, calibrate_threshold(calib, quantile),
                        calib.astype(np.float32), quantile=quantile, calibrated_on=source)


def _read_cached(path: Path, key: str) -> OODReference | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) == key:
                return OODReference(f["train"], f["mu"], f["sd"], float(f["threshold"]), f["val_distances"],
                                    int(f["k"]), float(f["quantile"]), str(f["calibrated_on"]))
    except (OSError, KeyError, ValueError):
        pass
    return None


def _write_cached(path: Path, key: str, ref: OODReference) -> None:
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), train=ref.train, mu=ref.mu, sd=ref.sd, threshold=np.float64(ref.threshold),
             val_distances=ref.val_distances, k=np.int64(ref.k), quantile=np.float64(ref.quantile),
             calibrated_on=np.array(ref.calibrated_on))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # a read-only run folder: keep it in memory only


def _read_shipped(path: Path) -> OODReference | None:
    """A shipped run's reference (``h2a.predict.shipping``): training embeddings in half precision."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            return OODReference(f.get_tensor("train").astype(np.float32), f.get_tensor("mu"), f.get_tensor("sd"),
                                float(meta["threshold"]), f.get_tensor("val_distances"), int(meta["k"]),
                                float(meta["quantile"]), str(meta.get("calibrated_on", "validation")))
    except (OSError, KeyError, ValueError):
        return None


def load_ood_reference(run: LoadedRun, *, build: bool = True) -> OODReference | None:
    """The run's OOD reference: a shipped run's ``ood.safetensors``, else ``ood.npz``,
    computed and cached there when missing or stale."""
    if (run.path / OOD_SHIPPED).is_file():
        return _read_shipped(run.path / OOD_SHIPPED)
    path = run.path / OOD_FILE
    key = _model_key(run.path)
    ref = _read_cached(path, key)
    if ref is not None or not build:
        return ref
    try:
        ref = build_ood_reference(run)
    except (OSError, ValueError, KeyError):  # dataset moved or unreadable: no embedding check
        return None
    if ref is not None:
        _write_cached(path, key, ref)
    return ref
