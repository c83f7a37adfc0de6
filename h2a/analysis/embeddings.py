"""CNN embeddings of a dataset's images, computed once and kept on disk.

An embedding is the pooled last feature map (``H2AModel.embed``) of either the
ImageNet-pretrained backbone (``source="pretrained"``) or a trained run's model
(``source=<run dir or name>``). Images come from the tensor cache in batches, so the
embedding step never decodes a file twice; the GPU is used with bf16 autocast when there
is one, plain float32 (channels-last) on a CPU.

Results live under ``<workspace>/cache/embeddings/<dataset>-<key>/`` and are keyed by

* the model identity: ``pretrained:<arch>`` or ``run:<name>:<sha1 of model.pt>``,
* the dataset fingerprint (ids, labels, file sizes/mtimes),
* the preprocessing ``cache_key()`` and the input normalisation,

so a rerun with the same inputs loads the array instead of computing it
(``Embeddings.from_cache`` says which happened).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from h2a.settings import get_settings
from h2a.data.preprocess import PreprocessConfig
from h2a.progress import ProgressFn, report
from h2a.run import Run, resolve_run, weights_file
from h2a.data.cache import build_cache
from h2a.data.transforms import input_norm, to_input
from h2a.device import amp_dtype, describe_device, resolve_device
from h2a.inference.loading import load_run
from h2a.models import create_model

__all__ = ["EMBED_VERSION", "Embeddings", "EmbeddingSource", "compute_embeddings", "embedding_dir",
           "load_embeddings", "resolve_source", "source_identity"]

EMBED_VERSION = 1
PRETRAINED = "pretrained"
_X_FILE = "X.npy"
_INDEX_FILE = "index.json"


@dataclass
class Embeddings:
    """Embedding vectors aligned with image ids and their labels.

    ``X`` is float32 (N, D); ``meta`` has one row per vector with ``id``, ``split``,
    ``male`` (nullable boolean) and ``boneage`` (float, NaN when unknown).
    """

    ids: list[str]
    X: np.ndarray
    meta: pd.DataFrame
    key: str
    source: str  # "pretrained:<arch>" or "run:<name>"
    path: Path
    from_cache: bool
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1]) if self.X.ndim == 2 else 0

    @property
    def male(self) -> np.ndarray:
        """float array: 1 male, 0 female, NaN unknown."""
        return self.meta["male"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)

    @property
    def boneage(self) -> np.ndarray:
        return self.meta["boneage"].to_numpy(dtype=float)


@dataclass
class EmbeddingSource:
    """A model ready to embed, and what identifies it in cache keys."""

    identity: str  # goes into the cache key
    label: str  # what a user reads: "pretrained:efficientnet_lite0" / "run:NAME"
    model: Any  # H2AModel in eval mode
    arch: str
    preprocess: PreprocessConfig
    norm: tuple[float, float] | None


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


_SHA_MEMO: dict[tuple, str] = {}


def _model_sha1(path: Path) -> str:
    """sha1 of a model file, remembered per (path, size, mtime): a page asks on every rerun."""
    st = path.stat()
    token = (str(path), st.st_size, st.st_mtime_ns)
    if token not in _SHA_MEMO:
        _SHA_MEMO[token] = _file_sha1(path)
    return _SHA_MEMO[token]


def _source_identity(source: str | Path, arch: str) -> tuple[str, str, Path | None]:
    """(identity, label, run_dir) without building a model (cheap: for cache lookups)."""
    if str(source) == PRETRAINED:
        return f"pretrained:{arch}", f"pretrained:{arch}", None
    run_dir = resolve_run(source)
    weights = weights_file(run_dir)
    if weights is None:
        raise FileNotFoundError(f"{run_dir.name}: not a finished run (no model.pt yet)")
    return f"run:{run_dir.name}:{_model_sha1(weights)}", f"run:{run_dir.name}", run_dir


def source_identity(source: str | Path, arch: str = "efficientnet_lite0") -> tuple[str, str, Path | None]:
    """(identity for keys, label for people, run dir or None): which model embeds, without
    loading it. Raises FileNotFoundError for a run that has no model yet."""
    return _source_identity(source, arch)


def _run_preprocess(run_dir: Path) -> PreprocessConfig:
    meta = Run.at(run_dir).meta
    if meta is None:
        raise FileNotFoundError(f"{run_dir.name}: not a finished run (no metadata.json yet)")
    return PreprocessConfig.from_dict(meta["preprocess"])


def resolve_source(source: str | Path, *, arch: str = "efficientnet_lite0",
                   preprocess: PreprocessConfig | None = None, device: torch.device | None = None) -> EmbeddingSource:
    """Build the model for ``source``: 'pretrained' (ImageNet weights of ``arch``) or a run.

    A run embeds with its own preprocessing unless ``preprocess`` is given.
    """
    identity, label, run_dir = _source_identity(source, arch)
    if run_dir is None:
        pcfg = preprocess or PreprocessConfig(size=128)
        model = create_model(arch, "boneage", pretrained=True, use_sex=False)
        model.to(device or torch.device("cpu")).eval()
        return EmbeddingSource(identity, label, model, arch, pcfg, input_norm(arch, pcfg))
    run = load_run(run_dir, device)
    pcfg = preprocess or run.preprocess
    name = run.meta["model"]["name"]
    return EmbeddingSource(identity, label, run.model, name, pcfg, input_norm(name, pcfg))


def embedding_key(identity: str, fingerprint: str, pcfg: PreprocessConfig,
                  norm: tuple[float, float] | None | str, precision: str = "fp32") -> str:
    parts = {"v": EMBED_VERSION, "model": identity, "data": fingerprint, "pp": pcfg.cache_key(),
             "size": pcfg.size, "norm": norm}
    if precision != "fp32":  # float32 keys stay what they were before precision was a choice
        parts["precision"] = precision
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return (re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "data")[:40]


def embedding_dir(ds_name: str, key: str, root: Path | None = None) -> Path:
    base = Path(root) if root is not None else get_settings().cache_dir / "embeddings"
    return base / f"{_slug(ds_name)}-{key}"


def load_embeddings(path: Path) -> Embeddings | None:
    """A complete stored embedding set, or None (missing or half-written)."""
    try:
        index = json.loads((path / _INDEX_FILE).read_text())
        if index.get("version") != EMBED_VERSION or not index.get("complete"):
            return None
        X = np.load(path / _X_FILE, mmap_mode=None, allow_pickle=False)
    except (OSError, ValueError):
        return None
    meta = pd.DataFrame(index["meta"])
    if X.shape[0] != len(meta):
        return None
    meta["id"] = meta["id"].astype(str)
    meta["male"] = meta["male"].astype("boolean")
    meta["boneage"] = pd.to_numeric(meta["boneage"], errors="coerce").astype(float)
    info = {k: v for k, v in index.items() if k != "meta"}
    return Embeddings(ids=meta["id"].tolist(), X=X, meta=meta, key=index["key"], source=index["source"],
                      path=path, from_cache=True, info=info)


def _save(path: Path, X: np.ndarray, meta: pd.DataFrame, index: dict) -> None:
    """Write into a temp dir next to ``path`` and rename it into place (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        np.save(tmp / _X_FILE, X, allow_pickle=False)
        records = meta.astype(object).where(meta.notna(), None).to_dict(orient="list")
        (tmp / _INDEX_FILE).write_text(json.dumps({**index, "meta": records, "complete": True}))
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@torch.inference_mode()
def embed_arrays(model, images: np.ndarray, norm: tuple[float, float] | None, device: torch.device, *,
                 batch_size: int = 64, progress: ProgressFn | None = None, offset: int = 0,
                 total: int | None = None, amp: str = "auto") -> np.ndarray:
    """Pooled embeddings (``H2AModel.embed``) of uint8 images (N, H, W) -> float32 (N, D), in batches.

    ``amp``: 'auto' (bf16 autocast on a GPU and on a CPU with native bf16, float32 on other CPUs), 'bf16' (also on a CPU with
    AMX/AVX512-BF16) or 'off'."""
    model.eval()
    n = len(images)
    total = total or n
    cuda = device.type == "cuda"
    adtype = amp_dtype(device, amp)
    ctx = (lambda: torch.autocast(device.type, dtype=adtype)) if adtype is not None else nullcontext
    out: np.ndarray | None = None
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        x = torch.from_numpy(np.ascontiguousarray(images[start:stop]))[:, None].to(device, non_blocking=cuda)
        x = to_input(x, norm).contiguous(memory_format=torch.channels_last)
        with ctx():
            f = model.embed(x)
        f = f.float().cpu().numpy()
        if out is None:
            out = np.empty((n, f.shape[1]), dtype=np.float32)
        out[start:stop] = f
        report(progress, offset + stop, total, "embedding images")
    if out is None:
        out = np.zeros((0, getattr(model, "num_features", 0)), dtype=np.float32)
    return out


def compute_embeddings(
    ds: Any,
    source: str | Path = PRETRAINED,
    *,
    arch: str = "efficientnet_lite0",
    preprocess: PreprocessConfig | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    force: bool = False,
    root: Path | None = None,
    amp: str = "auto",
) -> Embeddings:
    """Embeddings of every decodable image of ``ds`` (reused from disk when present).

    ``source``: 'pretrained' (ImageNet ``arch``) or a run dir/name (its own architecture
    and, unless ``preprocess`` is given, its own preprocessing). ``device`` None = the
    configured device (GPU when present). ``amp`` as in ``embed_arrays``; the precision is
    part of the storage key (bf16 vectors are close to, not equal to, float32 ones).
    """
    identity, label, run_dir = _source_identity(source, arch)
    pcfg = preprocess or (_run_preprocess(run_dir) if run_dir is not None else PreprocessConfig(size=128))
    if run_dir is not None:
        arch = (Run.at(run_dir).meta or {}).get("model", {}).get("name", arch)

    norm = input_norm(arch, pcfg)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype(device, amp), "fp32")
    key = embedding_key(identity, ds.fingerprint, pcfg, norm, precision)
    path = embedding_dir(ds.name, key, root)
    if not force:
        found = load_embeddings(path)
        if found is not None:
            report(progress, len(found), len(found), "embeddings reused from disk")
            return found

    src = resolve_source(source, arch=arch, preprocess=pcfg, device=device)
    model = src.model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    cache = build_cache(ds, pcfg, progress=progress)
    # Cache rows are the dataset rows with an image path, in ds.meta order (by position,
    # so an id present in two splits is no problem).
    with_path = ds.meta[ds.meta["path"].notna()].reset_index(drop=True)
    rows = np.flatnonzero(cache.ok)
    meta = with_path.loc[rows, ["id", "split", "male", "boneage"]].reset_index(drop=True)
    meta["id"] = meta["id"].astype(str)
    t0 = time.perf_counter()
    chunk = max(batch_size, 1024)  # bounded memory: copy this many images out of the memmap at once
    parts = []
    for a in range(0, len(rows), chunk):
        images = cache.take(rows[a:a + chunk])
        parts.append(embed_arrays(model, images, src.norm, device, batch_size=batch_size,
                                  progress=progress, offset=a, total=len(rows), amp=amp))
    X = np.concatenate(parts) if parts else np.zeros((0, model.num_features), np.float32)
    seconds = time.perf_counter() - t0
    index = {
        "version": EMBED_VERSION, "key": key, "source": label, "identity": identity, "arch": arch,
        "dataset": ds.name, "fingerprint": ds.fingerprint, "preprocess": pcfg.to_dict(), "norm": norm,
        "n": int(len(rows)), "dim": int(X.shape[1]), "n_failed_images": int((~cache.ok).sum()),
        "device": describe_device(device), "precision": precision, "seconds": round(seconds, 3),
        "images_per_s": round(len(rows) / seconds, 2) if seconds > 0 else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _save(path, X, meta, index)
    report(progress, len(rows), len(rows), f"embedded {len(rows)} images")
    return Embeddings(ids=meta["id"].tolist(), X=X, meta=meta, key=key, source=label, path=path,
                      from_cache=False, info=index)
