"""The analysis jobs of the Clusters page: ``embeddings`` and ``clusters`` (background.py kinds).

* ``embeddings``: the tensor cache and the CNN embeddings of one source (pretrained
  backbone or a trained run) on a dataset. The vectors land in the embedding cache of
  ``h2a.analysis.embeddings``; the job's result says where.
* ``clusters``: the embeddings (by waiting for the ``embeddings`` job of the same source,
  so two clusterings with different k share one embedding pass), then UMAP + k-means with
  a ``ClusterConfig`` (its fields are the job's params), and the k sweep. The job folder is
  the cache of the answer: ``frame.csv`` (one row per image) and result.json (scores,
  sweep, embedding facts), reused while the key (params + data + model) matches.

``clusters_spec`` is what the page and the CLI ask for; ``load_clusters`` reads an answer back.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from h2a.analysis.background import (
    Job,
    JobContext,
    JobFailed,
    JobKind,
    JobSpec,
    register_kind,
    wait_for,
)
from h2a.analysis.cluster_config import PRETRAINED_ARCH, ClusterConfig
from h2a.analysis.embeddings import PRETRAINED, compute_embeddings, load_embeddings, source_identity
from h2a.data.preprocess import PreprocessConfig
from h2a.exports import csv_bytes
from h2a.progress import ProgressFn
from h2a.run import atomic_write_bytes

__all__ = ["FRAME", "SWEEP_KS", "clusters_spec", "embeddings_spec", "load_clusters"]

FRAME = "frame.csv"
SWEEP_KS = tuple(range(2, 11))  # the "choosing k" curves: k = 2 to 10


# ---------------------------------------------------------------- specs

def _embedding_params(source: str | Path, preprocess: PreprocessConfig | None, arch: str) -> tuple[dict, dict]:
    """(params, identity) of an embedding pass: a run embeds with its own architecture."""
    identity, _label, run_dir = source_identity(source, arch)
    params = {"source": PRETRAINED if run_dir is None else str(run_dir),
              "arch": arch if run_dir is None else None,
              "preprocess": preprocess.to_dict() if preprocess is not None else None}
    return params, {"model": identity}


def embeddings_spec(ds: Any, source: str | Path = PRETRAINED, preprocess: PreprocessConfig | None = None,
                    arch: str = PRETRAINED_ARCH) -> JobSpec:
    """The ``embeddings`` job of ``source`` on ``ds`` (``preprocess`` None = a run's own)."""
    params, identity = _embedding_params(source, preprocess, arch)
    return JobSpec("embeddings", params, data=str(Path(ds.root).resolve()), fingerprint=ds.fingerprint,
                   identity=identity)


def clusters_spec(ds: Any, source: str | Path = PRETRAINED, preprocess: PreprocessConfig | None = None,
                  config: ClusterConfig | None = None, *, arch: str = PRETRAINED_ARCH, **settings: Any) -> JobSpec:
    """The ``clusters`` job: UMAP + k-means of ``source``'s embeddings with ``config`` (None:
    the declared defaults), changed by ``settings`` (ClusterConfig field names, e.g. ``k=3``)."""
    cfg = replace(config or ClusterConfig(), **settings)
    params, identity = _embedding_params(source, preprocess, arch)
    params.update({**cfg.to_dict(), "sweep": list(SWEEP_KS)})
    return JobSpec("clusters", params, data=str(Path(ds.root).resolve()), fingerprint=ds.fingerprint,
                   identity=identity)


def _embeddings_spec_of(spec: JobSpec) -> JobSpec:
    params = {k: spec.params.get(k) for k in ("source", "arch", "preprocess")}
    return JobSpec("embeddings", params, data=spec.data, fingerprint=spec.fingerprint, identity=spec.identity)


# ---------------------------------------------------------------- workers

def _staged(ctx: JobContext) -> ProgressFn:
    """compute_embeddings' progress, split into the stages a user reads (cache, embeddings)."""

    def _progress(done: int, total: int, message: str = "") -> None:
        stage = "embeddings" if "embed" in message else "tensor cache"
        if stage != ctx.stage:
            ctx.set_stage(stage)
        ctx.progress(done, total, message)

    return _progress


def _run_embeddings(ctx: JobContext) -> dict:
    ds = ctx.dataset()
    p = ctx.params
    pp = PreprocessConfig.from_dict(p["preprocess"]) if p.get("preprocess") else None
    ctx.set_stage("tensor cache")
    emb = compute_embeddings(ds, p["source"], arch=p.get("arch") or PRETRAINED_ARCH, preprocess=pp,
                             progress=_staged(ctx))
    return {"n": len(emb), "dim": emb.dim, "key": emb.key, "path": str(emb.path), "source": emb.source,
            "from_cache": bool(emb.from_cache), "device": emb.info.get("device"),
            "images_per_s": emb.info.get("images_per_s"), "n_failed_images": emb.info.get("n_failed_images"),
            "dataset": ds.name}


def _run_clusters(ctx: JobContext) -> dict:
    p = ctx.params
    cfg = ClusterConfig.from_dict(p)
    needed = _embeddings_spec_of(ctx.spec)
    got = wait_for(ctx, needed, "embeddings")
    emb = load_embeddings(Path(got.get("path", "")))
    if emb is None:
        raise JobFailed(f"the embeddings of job {needed.name} are missing on disk; ask again")
    if len(emb) <= cfg.k:
        raise JobFailed(f"only {len(emb)} decodable images: too few for k = {cfg.k}")
    ctx.set_stage("UMAP and k-means")
    from h2a.analysis.clustering import cluster_embeddings, sweep_k  # lazy: scikit-learn and UMAP load in the job's process, not the page's

    est, frame, scores = cluster_embeddings(emb, cfg, progress=ctx.steps)
    ctx.set_stage("k sweep")
    ks = tuple(x for x in p.get("sweep") or SWEEP_KS if x < len(emb))
    sweep = sweep_k(est.features_, ks, random_state=cfg.seed, progress=ctx.steps)
    atomic_write_bytes(ctx.dir / FRAME, csv_bytes(frame))
    return {"n": len(emb), "scores": scores, "sweep": sweep.to_dict(orient="records"),
            "embedding": {**{k_: got.get(k_) for k_ in ("n", "dim", "key", "source", "device", "images_per_s",
                                                        "n_failed_images", "dataset")},
                          "job": needed.name, "seconds": got.get("seconds")}}


register_kind(JobKind("embeddings", _run_embeddings, title="tensor cache + CNN embeddings"))
register_kind(JobKind("clusters", _run_clusters, title="embeddings + UMAP + k-means"))


# ---------------------------------------------------------------- reading an answer

def load_clusters(job: Job) -> tuple[pd.DataFrame, dict, pd.DataFrame, dict] | None:
    """(per-image frame, scores, k sweep, result) of a finished clusters job, else None."""
    result = job.result()
    if result is None or not (job.dir / FRAME).exists():
        return None
    frame = pd.read_csv(job.dir / FRAME, dtype={"id": str, "sex": str, "split": str}, keep_default_na=False,
                        na_values={"male": [""], "boneage": [""], "umap_x": [""], "umap_y": [""]})
    sweep = pd.DataFrame(result.get("sweep") or [], columns=["k", "inertia", "silhouette"])
    return frame, result["scores"], sweep, result
