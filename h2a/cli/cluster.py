"""``python -m h2a cluster``: UMAP + k-means of CNN embeddings, scored against sex and age.

Registered by ``h2a.cli.build_parser`` through ``register(sub)``. The clustering flags
come from ``ClusterConfig``'s declarations (``h2a.cli.cluster_options``), as do the
Clusters page's widgets and the background job's params.
"""

from __future__ import annotations

import argparse
import sys

from h2a.cli.cluster_options import add_cluster_options, cluster_config_from_args, embedding_preprocess_from_args
from h2a.cli.common import CliError, load_data, print_json
from h2a.progress import StderrProgress
from h2a.analysis.embeddings import compute_embeddings
from h2a.exports import write_csv
from h2a.models import PretrainedWeightsUnavailable


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("cluster", help="UMAP + k-means of CNN embeddings; do clusters follow sex or age?")
    p.add_argument("--data", required=True, help="dataset folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, metavar="RUN", help="embed with a trained run's backbone")
    src.add_argument("--backbone", choices=["pretrained"], default="pretrained",
                     help="ImageNet-pretrained backbone (default)")
    p.add_argument("--sweep", default=None, metavar="K1-K2",
                   help="also report inertia and silhouette for k in this range, e.g. 2-10")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="embedding precision: auto = bf16 on a GPU, float32 on a CPU; bf16 also on a CPU with AMX")
    p.add_argument("--out", default=None, metavar="FILE.csv", help="write coordinates and cluster assignments")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_cluster_options(p)
    p.set_defaults(func=cmd_cluster)
    return p


def _parse_range(text: str) -> list[int]:
    try:
        lo, _, hi = text.partition("-")
        ks = list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise CliError(f"--sweep wants a range like 2-10, not {text!r}") from None
    if not ks or ks[0] < 2:
        raise CliError("--sweep range must start at 2 or more")
    return ks


def cmd_cluster(args: argparse.Namespace) -> int:
    # scikit-learn, UMAP and the model registry load only when the command runs, so `h2a --help`
    # and the other commands start without them
    from h2a.analysis.clustering import cluster_embeddings, sweep_k  # lazy: loads scikit-learn for this command only

    cfg = cluster_config_from_args(args)
    ds = load_data(args.data)
    source = args.model or "pretrained"
    pcfg = embedding_preprocess_from_args(args)
    progress = StderrProgress("cluster")
    try:
        emb = compute_embeddings(ds, source, arch=args.arch, preprocess=pcfg, batch_size=args.batch_size,
                                 device=args.device, progress=progress, amp=args.amp)
    except (FileNotFoundError, PretrainedWeightsUnavailable, RuntimeError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if len(emb) <= cfg.k:
        raise CliError(f"{ds.name}: {len(emb)} decodable images, too few for k={cfg.k}")
    try:
        est, frame, scores = cluster_embeddings(emb, cfg, progress=progress)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    scores = {"dataset": ds.name, "synthetic": bool(ds.synthetic), **scores}
    if args.sweep:
        ks = _parse_range(args.sweep)
        sw = sweep_k(est.features_, ks, random_state=cfg.seed)
        sw_map = sweep_k(est.embedding_, ks, random_state=cfg.seed)
        scores["sweep_full"] = sw.to_dict(orient="records")
        scores["sweep_umap"] = sw_map.to_dict(orient="records")
    if args.out:
        scores["csv"] = _write_frame(args.out, frame)
    if args.json:
        print_json(scores)
        return 0
    _print_text(scores)
    return 0


def _write_frame(path: str, frame) -> str:
    try:
        return str(write_csv(path, frame))
    except OSError as exc:
        raise CliError(f"--out {path}: {exc.strerror or exc}") from exc


def _fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _print_text(s: dict) -> None:
    w = sys.stdout.write
    emb = s["embedding"]
    w(f"{s['n']} images of {s['dataset']}{' (SYNTHETIC)' if s['synthetic'] else ''}; embeddings "
      f"{emb['source']} ({emb['dim']}-d{', reused' if emb['from_cache'] else ''}); k={s['k']}\n")
    for label, sc in (("UMAP map", s), (s["full"]["space"], s["full"])):
        w(f"{label}: ARI vs sex {_fmt(sc['ari_sex'])}, NMI {_fmt(sc['nmi_sex'])}, purity {_fmt(sc['purity_sex'])} "
          f"(one big cluster: {_fmt(sc['purity_baseline'])}), silhouette {_fmt(sc['silhouette'])}, "
          f"bone-age variance explained {_fmt(sc['boneage_eta2'])}\n")
        for c in sc["clusters"]:
            share = None if c["share_male"] is None else 100 * c["share_male"]
            w(f"  cluster {c['cluster']}: {c['size']} images, {_fmt(share, '.0f')}% "
              f"male, bone age {_fmt(c['boneage_mean'], '.0f')} mo ({_fmt(c['boneage_min'], '.0f')}-"
              f"{_fmt(c['boneage_max'], '.0f')})\n")
    rho = s.get("umap_spearman_boneage") or [None, None]
    w(f"Spearman of UMAP axes with bone age: x {_fmt(rho[0], '+.2f')}, y {_fmt(rho[1], '+.2f')}\n")
    if s.get("verdict"):
        w(f"Verdict: {s['verdict']['reason']}\n")
    if s.get("csv"):
        w(f"coordinates and clusters written to {s['csv']}\n")
