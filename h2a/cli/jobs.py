"""``h2a jobs``: the background analysis jobs (``h2a.analysis.background``).

* ``h2a jobs list [--json]``: every job folder with its status, stage, progress and ETA;
* ``h2a jobs cancel KEY [--wait S]``: ask a job to stop at its next batch, then SIGTERM its
  process group if it has not stopped after S seconds (only while PID and start time match);
* ``h2a jobs start clusters|embeddings --data D ...``: ask for a job as the Clusters page
  does (same key: attaches to a running one, reuses a finished one; the clustering flags
  come from ``ClusterConfig``, as the page's widgets do); ``--wait`` follows it;
* ``h2a jobs run JOB_DIR``: the worker itself; the app starts it detached.

Each command imports ``h2a.analysis.background`` / ``cluster_jobs`` when it runs: they
load torch (through ``h2a.run``), which building the ``h2a`` parser must not.
"""

from __future__ import annotations

import argparse
import sys
import time

from h2a.cli.cluster_options import add_cluster_options, cluster_config_from_args, embedding_preprocess_from_args
from h2a.cli.common import CliError, load_data, print_json
from h2a.analysis.background import FINAL, JobFailed, cancel, jobs_root, list_jobs, resolve_job, run_job, start_job


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="background analysis jobs (embeddings, clusters): list, start, cancel")
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    ls = jsub.add_parser("list", help="every job with its status, progress and ETA")
    ls.add_argument("--json", action="store_true", help="print one JSON list")
    ls.set_defaults(func=cmd_list)

    cn = jsub.add_parser("cancel", help="stop a running job (cancel flag, then SIGTERM after --wait)")
    cn.add_argument("key", metavar="KEY", help="job name (clusters-1a2b...), key or unique key prefix")
    cn.add_argument("--wait", type=float, default=10.0, help="seconds to wait before SIGTERM (default 10)")
    cn.set_defaults(func=cmd_cancel)

    stt = jsub.add_parser("start", help="ask for a job as the Clusters page does (dedupe and reuse by key)")
    stt.add_argument("kind", choices=["clusters", "embeddings"])
    stt.add_argument("--data", required=True, help="dataset folder")
    stt.add_argument("--model", default=None, metavar="RUN", help="embed with a trained run (default: pretrained)")
    stt.add_argument("--restart", action="store_true", help="start again a failed, cancelled or stopped job")
    stt.add_argument("--wait", action="store_true", help="follow the job until it ends (progress on stderr)")
    stt.add_argument("--json", action="store_true", help="print the job as one JSON object")
    add_cluster_options(stt)
    stt.set_defaults(func=cmd_start)

    rn = jsub.add_parser("run", help="(internal) run the job in JOB_DIR in this process")
    rn.add_argument("job_dir", metavar="JOB_DIR")
    rn.set_defaults(func=cmd_run)


def _row(job) -> dict:
    st = job.status()
    return {"name": job.name, "kind": job.kind, "key": job.key, "status": st.get("status"),
            "stage": st.get("stage"), "done": st.get("done"), "total": st.get("total"), "rate": st.get("rate"),
            "eta_s": st.get("eta_s"), "elapsed_s": st.get("elapsed_s"), "message": st.get("message"),
            "updated": st.get("updated"), "pid": st.get("pid"), "path": str(job.dir)}


def cmd_list(args: argparse.Namespace) -> int:
    rows = [_row(j) for j in list_jobs()]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no jobs under {jobs_root()}")
        return 0
    for r in rows:
        prog = f"{r['done']}/{r['total']}" if r["total"] else ""
        eta = f" ETA {r['eta_s']:.0f}s" if isinstance(r["eta_s"], (int, float)) and r["status"] == "running" else ""
        print(f"{r['name']:<36} {r['status']:<10} {r['stage'] or '':<28} {prog:>13}{eta}  {r['message'] or ''}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    try:
        job = resolve_job(args.key)
    except JobFailed as exc:
        raise CliError(str(exc)) from exc
    outcome = cancel(job, wait_s=max(0.0, args.wait))
    print(f"{job.name}: {outcome}")
    return 0 if outcome in ("cancelled", "terminated") else 1


def cmd_start(args: argparse.Namespace) -> int:
    from h2a.analysis.cluster_jobs import clusters_spec, embeddings_spec  # lazy: loads scikit-learn for this command only

    cfg = cluster_config_from_args(args)
    ds = load_data(args.data)
    source = args.model or "pretrained"
    pcfg = embedding_preprocess_from_args(args)
    try:
        if args.kind == "embeddings":
            spec = embeddings_spec(ds, source, pcfg, arch=args.arch)
        else:
            spec = clusters_spec(ds, source, pcfg, cfg, arch=args.arch)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    job = start_job(spec, restart=args.restart)
    if args.wait:
        last = ""
        while (st := job.status()).get("status") not in FINAL:
            line = f"\r{job.name} {st.get('stage', '')} {st.get('done', 0)}/{st.get('total', 0)}"
            if isinstance(st.get("eta_s"), (int, float)):
                line += f" ETA {st['eta_s']:.0f}s"
            if line != last:
                sys.stderr.write(line[:160].ljust(len(last)))
                sys.stderr.flush()
                last = line
            time.sleep(1.0)
        sys.stderr.write("\n")
    row = _row(job)
    if args.json:
        print_json(row)
    else:
        print(f"{row['name']}: {row['status']} {row['message'] or ''} ({row['path']})")
    return 0 if not args.wait or row["status"] == "finished" else 1


def cmd_run(args: argparse.Namespace) -> int:
    return run_job(args.job_dir)
