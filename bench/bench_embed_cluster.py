"""Benchmark: CNN embedding throughput and UMAP + k-means time on the RSNA thumbnails.

    python bench/bench_embed_cluster.py [--data ../shared/data/rsna-thumbs-100] [--size 128]

Prints (and writes to bench/out/embed_cluster.json):

* tensor-cache build time at the chosen size (reused when present);
* embedding images/s of the ImageNet-pretrained EfficientNet-Lite0 on the current device
  (GPU with bf16 autocast when present, else CPU float32 channels-last), measured on a
  timed sample and again over the whole dataset by ``compute_embeddings`` (stored on disk,
  so a second run of this script reuses it and says so);
* standardise + PCA, UMAP (numba compilation timed separately), k-means on the map and on
  the full embedding, and a k = 2..10 sweep, on all embeddings (11,005 for the thumbnails);
* the k = 2 scores against sex (ARI, NMI, purity) on the map and on the full embedding.

``--skip-full`` stops after the throughput sample; ``--json FILE`` writes the figures there
too (bench/gpu_check.py reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "rsna-thumbs-100"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sample", type=int, default=512,
                    help="images in the timed throughput sample (the dataset's repeated when it has fewer)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                    help="bf16 autocast also on a CPU with AMX (auto: only on a GPU)")
    ap.add_argument("--skip-full", action="store_true", help="only the throughput sample, no full embedding/UMAP")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    import numpy as np
    import torch

    from h2a.data.cache import build_cache
    from h2a.analysis.clustering import EmbeddingClusterer, sweep_k
    from h2a.data.datasets import load_dataset
    from h2a.device import amp_dtype, describe_device, resolve_device
    from h2a.analysis.embeddings import compute_embeddings, embed_arrays, resolve_source
    from h2a.data.preprocess import PreprocessConfig
    from h2a.progress import StderrProgress

    out: dict = {"data": args.data, "size": args.size, "batch_size": args.batch_size,
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                 "torch_threads": torch.get_num_threads()}
    try:
        out["load_avg_start"] = os.getloadavg()
    except OSError:
        pass
    device = resolve_device(args.device)
    out["device"] = describe_device(device)
    ds = load_dataset(args.data)
    pcfg = PreprocessConfig(size=args.size)

    t = time.perf_counter()
    cache = build_cache(ds, pcfg, progress=StderrProgress("cache"))
    out["cache_seconds"] = round(time.perf_counter() - t, 2)
    out["cache_reused"] = not cache.built_now
    out["n_images"] = len(cache)

    # ---- throughput on a sample (model already built and warmed up)
    src = resolve_source("pretrained", preprocess=pcfg, device=device)
    model = src.model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # a dataset smaller than the sample is repeated (a GPU needs more images than a few originals)
    rows = np.resize(np.flatnonzero(cache.ok), args.sample)
    images = cache.take(rows)
    # warm-up batch (one-time oneDNN/CUDA setup is not throughput)
    embed_arrays(model, images[: args.batch_size], src.norm, device, batch_size=args.batch_size, amp=args.amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    embed_arrays(model, images, src.norm, device, batch_size=args.batch_size, amp=args.amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    out["embed_sample"] = {"n": len(images), "seconds": round(dt, 2), "images_per_s": round(len(images) / dt, 1),
                           "amp": args.amp, "batch_size": args.batch_size,
                           "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype(device, args.amp),
                                                                                            "fp32"),
                           "channels_last": device.type == "cuda"}
    print(f"embedding throughput: {len(images) / dt:.1f} images/s ({len(images)} images at {args.size} px, "
          f"batch {args.batch_size}, {out['device']})", flush=True)
    if args.skip_full:
        print(json.dumps(out, indent=2))
        _write(args.json, out)
        return 0

    # ---- the whole dataset through compute_embeddings (stored on disk)
    t = time.perf_counter()
    emb = compute_embeddings(ds, "pretrained", preprocess=pcfg, batch_size=args.batch_size, device=device,
                             progress=StderrProgress("embed"), amp=args.amp)
    dt = time.perf_counter() - t
    out["embed_full"] = {"n": len(emb), "dim": emb.dim, "seconds": round(dt, 1), "from_cache": emb.from_cache,
                         "images_per_s_when_computed": emb.info.get("images_per_s")}
    print(f"embeddings of {len(emb)} images: {dt:.1f} s ({'reused from disk' if emb.from_cache else 'computed'}; "
          f"{emb.info.get('images_per_s')} images/s when computed)", flush=True)

    # ---- UMAP + k-means on all of them
    import umap  # noqa: F401  (import time is not clustering time)

    t = time.perf_counter()
    EmbeddingClusterer(2, pca=10, n_neighbors=5).fit(np.random.default_rng(0).normal(size=(300, 20)))
    out["numba_warmup_seconds"] = round(time.perf_counter() - t, 1)
    timings = {}
    est = EmbeddingClusterer(args.k, pca=50, n_neighbors=15, min_dist=0.1, random_state=0)
    marks = []
    est.fit(emb.X, progress=lambda d, n, m: marks.append((time.perf_counter(), m)))
    for (t0, m0), (t1, _) in zip(marks, marks[1:]):
        timings[m0] = round(t1 - t0, 2)
    timings["total_fit"] = round(marks[-1][0] - marks[0][0], 2)
    t = time.perf_counter()
    sw = sweep_k(est.features_, range(2, 11))
    timings["sweep_k_2_10_full"] = round(time.perf_counter() - t, 2)
    out["clustering_seconds"] = timings
    s = est.scores(emb.male, emb.boneage)
    keep = ("ari_sex", "nmi_sex", "purity_sex", "purity_baseline", "silhouette", "boneage_eta2")
    out["scores_k"] = {**{k: s[k] for k in keep}, "umap_spearman_boneage": s["umap_spearman_boneage"],
                       "clusters": s["clusters"], "full": {k: s["full"][k] for k in keep + ("clusters",)}}
    out["sweep"] = sw.to_dict(orient="records")
    print(f"UMAP + k-means on {len(emb)} x {emb.dim} embeddings: "
          + ", ".join(f"{k} {v} s" for k, v in timings.items()), flush=True)
    for label, sc in (("map", s), ("full", s["full"])):
        print(f"k={args.k} vs sex ({label}): ARI {sc['ari_sex']:.3f}, NMI {sc['nmi_sex']:.3f}, purity "
              f"{sc['purity_sex']:.3f} (baseline {sc['purity_baseline']:.3f}), silhouette {sc['silhouette']:.3f}, "
              f"bone-age eta2 {sc['boneage_eta2']:.3f}")
    try:
        out["load_avg_end"] = os.getloadavg()
    except OSError:
        pass
    dest = REPO / "bench" / "out"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "embed_cluster.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"written to {dest / 'embed_cluster.json'}")
    _write(args.json, out)
    return 0


def _write(path: Path | None, out: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
