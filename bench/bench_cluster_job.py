"""Time the Clusters page's background job on a dataset: tensor cache, embeddings, UMAP + k-means.

Usage: python bench/bench_cluster_job.py --data DIR   (h2a from the installed package) [--size 128] [--k 2] [--fresh]

Asks for the same job the page asks for (``h2a.analysis.cluster_jobs.clusters_spec``), waits
for it and prints the time of each stage from the jobs' own records (progress.json timings),
plus how long asking took (the page's cost: it returns after that). ``--fresh`` uses a new
workspace under /tmp, so nothing is reused. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="a new, empty workspace (no cache reused)")
    args = ap.parse_args()
    if args.fresh:
        os.environ["H2A_WORKSPACE"] = tempfile.mkdtemp(prefix="h2a-bench-jobs-")
    from h2a.analysis.background import FINAL, Job, start_job
    from h2a.analysis.cluster_jobs import clusters_spec
    from h2a.data.datasets import load_dataset
    from h2a.data.preprocess import PreprocessConfig

    ds = load_dataset(args.data)
    t0 = time.perf_counter()
    spec = clusters_spec(ds, "pretrained", PreprocessConfig(size=args.size), k=args.k)
    job = start_job(spec)
    ask_s = time.perf_counter() - t0
    print(f"asked for {job.name} in {ask_s:.2f} s ({len(ds.with_images())} images)", file=sys.stderr)
    last = ""
    while (st := job.status()).get("status") not in FINAL:
        line = f"{st.get('stage')} {st.get('done')}/{st.get('total')} ETA {st.get('eta_s')}"
        if line != last:
            print(f"[{time.perf_counter() - t0:7.1f} s] {line}", file=sys.stderr, flush=True)
            last = line
        time.sleep(2)
    wall = time.perf_counter() - t0
    if st["status"] != "finished":
        print(f"{job.name}: {st['status']}: {st.get('message')}", file=sys.stderr)
        return 1
    result = job.result()
    emb_job = Job(job.dir.parent / result["embedding"]["job"])
    emb = emb_job.result() or {}
    out = {"dataset": ds.name, "images": result["n"], "size": args.size, "ask_s": round(ask_s, 3),
           "wall_s": round(wall, 1), "embeddings_job_s": emb.get("seconds"), "embeddings_stages": emb.get("timings"),
           "images_per_s_embedding": emb.get("images_per_s"), "clusters_job_s": result.get("seconds"),
           "clusters_stages": result.get("timings"), "cpus": os.cpu_count(), "workspace": os.environ.get("H2A_WORKSPACE"),
           "job": str(job.dir)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
