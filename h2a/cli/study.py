"""``h2a study``: studies on Optuna (run, worker, show, list, stop, confirm, report).

``run`` creates or continues a study and runs trials until it has its finished trials;
``worker`` joins an existing study (what ``--workers K`` starts, and what another machine
runs against the same ``--storage``). Settings are fixed when a study is created; a rerun
continues it (``--trials`` may raise the target).
"""

from __future__ import annotations

import argparse
import sys

from h2a.cli.common import CliError, print_json
from h2a.studies import PRUNERS, StudySpec, list_studies, stop_study, study_summary
from h2a.studies.confirm import DEFAULT_VIEWS, confirm_search
from h2a.studies.errors import StudyError
from h2a.studies.presets import preset_names
from h2a.studies.space import SpaceError
from h2a.studies.storage import check_study_name, job_dir, load_study


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _spec(args: argparse.Namespace):
    return StudySpec(name=args.name, data=args.data, preset=args.preset, space_file=args.space, trials=args.trials,
                     trial_minutes=args.trial_minutes, workers=args.workers, storage=args.storage,
                     pruner=args.pruner, seed=args.seed)


def _check_name(name: str) -> str:
    try:
        return check_study_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_run(args: argparse.Namespace) -> int:
    from h2a.studies.coordinator import run_study  # lazy: loads Optuna for this command only

    if args.trials is not None and args.trials < 1:
        raise CliError("--trials must be at least 1")
    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    if not args.trial_minutes > 0:
        raise CliError("--trial-minutes must be above 0")
    sources = None
    if args.boneage_run or args.sex_run:
        sources = {"imagenet": None, **({"boneage": args.boneage_run} if args.boneage_run else {}),
                   **({"sex": args.sex_run} if args.sex_run else {})}
    try:
        summary = run_study(_spec(args), log=_log, sources=sources)
    except (SpaceError, StudyError) as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from h2a.studies.workers import run_worker  # lazy: loads Optuna for this command only

    try:
        load_study(args.name, args.storage)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from exc
    ran = run_worker(args.name, args.storage, args.worker, log=_log, max_trials=args.max_trials)
    _log(f"worker {args.worker}: {ran} trials")
    return 0


def _summary(args: argparse.Namespace) -> dict:
    try:
        return study_summary(args.name, args.storage)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from exc


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_summary(s: dict) -> None:
    print(f"study {s['study']} ({s.get('preset') or s.get('kind')}, {s['task']}): {s['n_trials']} trials, "
          f"{s['n_finished']} finished; value = validation {s['metric']} ({s['direction']})")
    for t in s["trials"]:
        what = f"{t['arm']} seed {t['seed']}" if t.get("arm") else ", ".join(f"{k}={_fmt(v)}" for k, v in t["params"].items())
        print(f"  #{t['number']:<3} {t['state']:<8} {_fmt(t['value']):>8}  {t['run'] or '-'}  {what}"
              + (f"  ({t['error']})" if t.get("error") else ""))
    if s.get("best"):
        print(f"best: trial {s['best']['number']} ({_fmt(s['best']['value'])}) {s['best']['run']}")
    if s.get("baseline"):
        b = s["baseline"]
        print(f"baseline (the base settings): trial {b['number']} {b['state']} ({_fmt(b['value'])}) {b['run'] or '-'}")
    for c in s.get("comparisons") or []:
        print(f"  {c.get('verdict') or c}")
    if s.get("confirmation"):
        _print_confirmation(s["confirmation"])
    if s.get("clusters") is not None:
        print("clusters: see --json")


def cmd_show(args: argparse.Namespace) -> int:
    summary = _summary(args)
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    names = list_studies(args.storage)
    if args.json:
        print_json(names)
    else:
        print("\n".join(names) if names else "no studies yet")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if stop_study(args.name):
        print(f"study {args.name}: asked to stop (running trials end after their batch; `h2a study run "
              f"--name {args.name}` resumes it)")
        return 0
    raise CliError(f"study {args.name} is not running on this machine")


def cmd_confirm(args: argparse.Namespace) -> int:
    views = DEFAULT_VIEWS if args.views is None else args.views
    try:
        record = confirm_search(args.name, args.storage, views=views, log=_log)
    except StudyError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print_json(record)
    else:
        _print_confirmation(record)
    return 0


def _print_confirmation(c: dict) -> None:
    metric = c["metric"].upper()
    print(f"best trial {c['best']['number']} ({c['best']['run']}) against the base settings, trial "
          f"{c['baseline']['number']} ({c['baseline']['run']}):")
    for split, what in (("validation", "validation (one view; decides)"),
                        ("holdout", f"held-out once (mirror + {c['views']} views)")):
        if c.get(split):
            print(f"  {what}: {c[split]['verdict']}")
    values = ", ".join(f"{k} {v:.3f}" for k, v in (c.get("holdout_values") or {}).items())
    print(f"  held-out {metric} ({c.get('n_holdout')} images): {values}")
    print(f"decision: {c['decision']}")


def cmd_report(args: argparse.Namespace) -> int:
    from h2a.studies.report import write_report  # lazy: loads scikit-learn for this command only

    _summary(args)  # a missing study is one clear line
    path = write_report(args.name, args.storage, args.out or job_dir(args.name))
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="studies: arms with CIs and hyper-parameter searches (Optuna)")
    ssub = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")

    def storage_opt(q: argparse.ArgumentParser) -> None:
        q.add_argument("--storage", default=None, metavar="URL",
                       help="Optuna storage URL (default: SQLite in <workspace>/studies/studies.db); "
                            "workers on several machines share one database URL")

    r = ssub.add_parser("run", help="create or continue a study and run its trials")
    r.add_argument("--name", required=True, type=_check_name)
    r.add_argument("--data", default=None, help="dataset folder (required when the study is created)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--preset", choices=preset_names(), help="a ready-made study (see the README's Studies)")
    g.add_argument("--space", metavar="FILE.yaml", help="a search space or arms in YAML (h2a.studies.space)")
    r.add_argument("--trials", type=int, default=None, metavar="N",
                   help="finished trials in total (a search needs it; arms default to every arm x seed)")
    r.add_argument("--trial-minutes", type=float, default=5.0, metavar="M", help="time budget of each trial")
    r.add_argument("--workers", type=int, default=1, metavar="K", help="local worker processes (CPU threads shared)")
    r.add_argument("--pruner", choices=PRUNERS, default=None,
                   help="prune on per-epoch validation (default: median for a search, none for arms)")
    r.add_argument("--seed", type=int, default=0, help="sampler seed, and the trials' seed in a search")
    r.add_argument("--boneage-run", metavar="RUN", help="clusters preset: the bone-age run (default: the best)")
    r.add_argument("--sex-run", metavar="RUN", help="clusters preset: the sex run (default: the best)")
    storage_opt(r)
    r.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    r.set_defaults(func=cmd_run)

    w = ssub.add_parser("worker", help="join an existing study as one more worker (e.g. on another machine)")
    w.add_argument("--name", required=True, type=_check_name)
    w.add_argument("--worker", type=int, default=0, help="this worker's number (seeds its sampler)")
    w.add_argument("--max-trials", type=int, default=None, metavar="N", help="run at most N trials, then exit")
    storage_opt(w)
    w.set_defaults(func=cmd_worker)

    s = ssub.add_parser("show", help="a study's trials, best trial and arm comparisons")
    s.add_argument("name", type=_check_name)
    storage_opt(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    li = ssub.add_parser("list", help="the studies in the storage")
    storage_opt(li)
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_list)

    st = ssub.add_parser("stop", help="stop a study running on this machine (resume with study run)")
    st.add_argument("name", type=_check_name)
    st.set_defaults(func=cmd_stop)

    cf = ssub.add_parser("confirm", help="a search's best trial against its base settings: validation (decides), "
                                         "then held-out once; stored in the study")
    cf.add_argument("name", type=_check_name)
    cf.add_argument("--views", type=int, default=None, metavar="N",
                    help="augmented copies averaged with the image and its mirror on held-out "
                         "(default 64, the CPU recipe's procedure)")
    storage_opt(cf)
    cf.add_argument("--json", action="store_true")
    cf.set_defaults(func=cmd_confirm)

    rp = ssub.add_parser("report", help="write a Markdown report with the plots")
    rp.add_argument("name", type=_check_name)
    storage_opt(rp)
    rp.add_argument("--out", default=None, metavar="DIR", help="folder for the report (default: the study's folder)")
    rp.set_defaults(func=cmd_report)
