"""Studies page widgets: the start form, the studies table, the live monitor of a running
study (``st.fragment(run_every=...)`` polling ``study_job_status``) and the results (charts,
the arm table with its verdicts, the clusters table, the trials CSV).

Everything computed here comes from ``h2a.studies`` (the summary, the comparisons) and
``h2a.studies.report`` (tables and figures, the same ones the Markdown report writes), so the
page, ``h2a study show`` and ``h2a study report`` never disagree.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from h2a.app.charts import style
from h2a.app.plain import plain, safe_table
from h2a.exports import csv_bytes
from h2a.studies import (
    PRUNERS,
    StudySpec,
    list_studies,
    load_study,
    start_confirm_job,
    start_study_job,
    stop_study,
    study_job_status,
    study_summary,
)
from h2a.studies.report import (
    clusters_frame,
    comparison_figure,
    confirmation_frame,
    findings_rows,
    study_figures,
    trials_frame,
)
from h2a.studies.storage import check_study_name, job_dir, studies_dir
from h2a.app.state import dataset_at
from h2a.data.datasets import DatasetError
from h2a.run import JOB
from h2a.server import PathNotAllowed, check_data_path
from h2a.studies.errors import StudyError
from h2a.studies.presets import PRESETS, preset_names
from h2a.studies.space import load_space

UPLOAD = "Upload a YAML space…"
POLL_S = 3
LIVE = ("running",)
STATUS_ICONS = {"running": ":material/sync:", "finished": ":material/check_circle:", "failed": ":material/error:",
                "stopped": ":material/pause_circle:", "none": ":material/radio_button_unchecked:"}


# ---------------------------------------------------------------- the form

def _presets() -> list[str]:
    return preset_names()


def _describe_preset(name: str) -> str:
    return PRESETS.get(name, {}).get("description", "")


def _data_folder(typed: str) -> Path:
    """The typed dataset folder, checked against the server's shared roots and loadable as a
    dataset (labels only). Raises ValueError with the reason."""
    if not typed.strip():
        raise ValueError("give the dataset folder the trials train on")
    try:
        path = check_data_path(typed.strip())
    except PathNotAllowed as exc:
        raise ValueError(str(exc)) from exc
    if not path.is_dir():
        raise ValueError(f"{path}: no such folder")
    try:
        ds = dataset_at(path)
    except DatasetError as exc:
        raise ValueError(f"{path}: not a usable dataset ({exc})") from exc
    if len(ds.labelled()) == 0:
        raise ValueError(f"{path}: no labelled images to train on")
    return path


def _save_upload(name: str, upload) -> Path:
    """Keep an uploaded space next to the study's job (the background job reads the file)."""
    d = job_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "space.yaml"
    tmp = d / f".space-{time.time_ns()}.yaml"
    tmp.write_bytes(upload.getvalue())
    try:
        load_space(tmp)  # SpaceError (a ValueError) names the bad key before anything starts
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def start_form(default_data: Path | None) -> str | None:
    """The 'new study' form; on submit starts the study in the background and returns its name.

    Any problem (a bad name, a folder outside the shared roots, a bad YAML space, a study of
    that name already running) is an ``st.error`` naming it; nothing starts."""
    presets = _presets()
    with st.form("study_form"):
        c1, c2 = st.columns(2)
        name = c1.text_input("Study name", key="study_name", placeholder="auto: preset-time",
                             help="letters, digits, '.', '-' and '_'; reuse a stopped study's name to resume it")
        data = c2.text_input("Data folder", value=str(default_data or ""), key="study_data",
                             help="the dataset the trials train on (the active dataset by default)")
        c3, c4 = st.columns(2)
        choice = c3.selectbox("What to run", presets + [UPLOAD], key="study_preset",
                              format_func=lambda p: p if p == UPLOAD else f"{p}: {_describe_preset(p)}",
                              help="a preset reproduces a seed paper's experiment; a YAML space is your own")
        upload = c4.file_uploader("YAML space (when uploading)", type=["yaml", "yml"], key="study_space")
        c5, c6, c7, c8 = st.columns(4)
        trials = c5.number_input("Trials", min_value=0, max_value=10_000, value=0, step=1, key="study_trials",
                                 help="0 = every arm and seed once (arm studies); a search needs a number")
        minutes = c6.number_input("Minutes per trial", min_value=0.5, max_value=24 * 60.0, value=5.0, step=0.5,
                                  key="study_minutes", help="each trial's time budget")
        workers = c7.number_input("Workers", min_value=1, max_value=64, value=1, step=1, key="study_workers",
                                  help="local worker processes (others may join from other machines with "
                                       "`h2a study worker`)")
        pruner = c8.selectbox("Pruner", ["auto"] + list(PRUNERS), key="study_pruner",
                              help="auto = median for a search, none for arms (pruning an arm biases it)")
        submitted = st.form_submit_button("Start study", type="primary")
    if not submitted:
        return None
    name = name.strip() or f"{choice if choice != UPLOAD else 'space'}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        check_study_name(name)
    except ValueError as exc:
        text = plain(exc, 600)
        st.error(f"{text[:1].upper()}{text[1:]}.")
        return None
    try:
        path = _data_folder(data)
        space_file = None
        if choice == UPLOAD:
            if upload is None:
                raise ValueError("choose a YAML space file to upload, or pick a preset")
            space_file = str(_save_upload(name, upload))
        spec = StudySpec(name=name, data=str(path), preset=None if choice == UPLOAD else choice,
                         space_file=space_file, trials=int(trials) or None, trial_minutes=float(minutes),
                         workers=int(workers), pruner=None if pruner == "auto" else pruner)
        start_study_job(spec)
    except (StudyError, ValueError, OSError) as exc:  # SpaceError is a ValueError
        st.error(f"Study not started: {plain(exc, 600)}")
        return None
    st.toast(f"Started study {plain(name)}")
    return name


# ---------------------------------------------------------------- the list

def _brief(name: str) -> dict:
    """A table row without the comparisons (cheap for many studies)."""
    row: dict = {"study": name, "preset": None, "status": "none", "trials": "", "best": None}
    row["status"] = study_job_status(name).get("status", "none")
    try:
        study = load_study(name)
    except KeyError:
        row["preset"] = "(not created yet: see its log)"
        return row
    attrs = study.user_attrs
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("spare")]
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    row["preset"] = attrs.get("preset") or attrs.get("kind") or "(own space)"
    row["trials"] = f"{len(done)} done / {len(trials)}"
    if done:
        pick = min if attrs.get("direction", "minimize") == "minimize" else max
        row["best"] = round(float(pick(t.value for t in done)), 3)
    row["metric"] = (attrs.get("metric") or "").upper()
    return row


def study_names() -> list[str]:
    """Studies in the storage, and those started from here whose job has not created the study
    yet (starting, or failed early: their log says why)."""
    jobs = {p.parent.name for p in studies_dir().glob(f"*/{JOB}")} if studies_dir().is_dir() else set()
    return sorted(set(list_studies()) | jobs)


def studies_table() -> pd.DataFrame:
    """Every study in the workspace's storage with its job status and best validation figure."""
    try:
        rows = [_brief(n) for n in study_names()]
    except Exception as exc:  # noqa: BLE001 - a broken storage URL or file: say so, keep the page
        st.error(f"The study storage cannot be read: {plain(exc, 600)}")
        rows = []
    return pd.DataFrame(rows, columns=["study", "preset", "status", "trials", "best", "metric"])


# ---------------------------------------------------------------- one study

def _token(summary: dict) -> tuple:
    """Changes whenever a trial starts, ends or changes state: the cache key of figures."""
    return tuple((t["number"], t["state"], t["value"]) for t in summary.get("trials") or [])


@st.cache_data(show_spinner="Drawing the study's charts…", max_entries=32)
def figures_for(name: str, token: tuple, metric: str | None) -> list:
    """Optuna's figures for a study (cached until a trial changes)."""
    figs = study_figures(load_study(name), metric)
    for f in figs:
        if f.figure is not None:
            style(f.figure, height=420)
            if f.key == "parallel":  # room above the axes for the title; no white sheet in a dark theme
                f.figure.update_layout(margin={"l": 40, "r": 10, "t": 100, "b": 30},
                                       paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)")
    return figs


def _status_line(name: str, job: dict) -> None:
    status = job.get("status", "none")
    total = job.get("total")
    done = int(job.get("finished") or 0)
    where = {"none": "not started from this page (run from the command line, or another machine)"}.get(status, status)
    # study names are folder names; messages quote paths and a YAML space's words
    st.markdown(f"**{plain(name)}** · {STATUS_ICONS.get(status, '')} {plain(where)}")
    if total:
        st.progress(min(1.0, done / total), text=f"{done}/{total} trials finished"
                    + (f" · {plain(job['message'], 400)}" if job.get("message") else ""))
    elif job.get("message"):
        st.caption(plain(job["message"], 1000))


def monitor(name: str) -> None:
    """Status, progress, stop button and log of a study's background job; polls while it runs."""
    live = study_job_status(name).get("status") in LIVE

    @st.fragment(run_every=POLL_S if live else None)
    def _watch() -> None:
        job = study_job_status(name)
        _status_line(name, job)
        if job.get("status") in LIVE:
            if st.button("Stop study", key=f"stop-{name}",
                         help="no new trials; running trials stop after their batch and resume on the next start"):
                if stop_study(name):
                    st.toast("Stop requested: running trials end after their current batch.")
                else:
                    st.toast("Nothing to stop: the study is not running on this machine.")
        with st.expander("Log"):
            st.code(job.get("log_tail") or "(no log: the study was not started from this page)", language=None)
        if live and job.get("status") not in LIVE:
            st.rerun()  # the job ended: redraw the results once, and stop polling

    _watch()


def _comparison_table(comparisons: list[dict]) -> pd.DataFrame:
    rows = []
    for c in comparisons:
        ok = c.get("difference") is not None
        rows.append({"arm": c["arm"], "reference": c["reference"], "images": c.get("n_images"),
                     "seeds (arm / ref)": f"{c.get('n_seeds_arm')} / {c.get('n_seeds_reference')}",
                     f"arm {c['metric'].upper()}": c.get("value_arm"),
                     f"reference {c['metric'].upper()}": c.get("value_reference"),
                     "difference": c.get("difference"),
                     "95% CI": f"{c['ci_low']:+.2f} to {c['ci_high']:+.2f}" if ok else "-",
                     "significant": "yes" if c.get("significant") else "no"})
    return pd.DataFrame(rows)


def show_arms(comparisons: list[dict]) -> None:
    """The arm table with CIs, a forest plot, and one plain verdict per comparison."""
    if not comparisons:
        st.info("No arm comparison yet: it appears once the reference arm and another arm each have a finished "
                "trial with held-out predictions.")
        return
    # the CI is our own numbers: escaping would turn "+3.98 to +4.14" into text with a quote
    table = safe_table(_comparison_table(comparisons), own=("95% CI",))
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"difference": st.column_config.NumberColumn(format="%+.2f")})
    fig = comparison_figure(comparisons)
    if fig is not None:
        st.plotly_chart(fig, width="stretch", key="arms-forest")
    for c in comparisons:
        (st.success if c.get("significant") else st.info)(plain(c["verdict"], 1000), icon=":material/balance:")
    st.caption("Held-out images, paired bootstrap (2,000 resamples): each resample scores both arms on the same "
               "images. With several seeds an arm's per-image predictions are averaged over its seeds.")


def show_confirmation(name: str, summary: dict) -> None:
    """A search's best trial against its base settings: the stored confirmation, or a button
    that measures it in the background (``h2a study confirm``)."""
    c, best, base = summary.get("confirmation"), summary.get("best"), summary.get("baseline")
    if c:
        frame = confirmation_frame(c)
        if not frame.empty:
            frame = safe_table(frame, own=("95% CI",))  # our own numbers, kept as typed (see show_arms)
            st.dataframe(frame, hide_index=True, width="stretch",
                         column_config={"difference": st.column_config.NumberColumn(format="%+.2f")})
        values = " · ".join(f"{k}: {v:.3f}" for k, v in (c.get("holdout_values") or {}).items())
        st.caption(f"Held-out {c['metric'].upper()} on {c.get('n_holdout'):,} images (the image, its mirror and "
                   f"{c['views']} augmented copies): {values}. The best trial was picked on validation, so its lead "
                   "there is optimistic; held-out was measured once and chose nothing.")
        (st.success if c.get("adopt") else st.info)(f"Decision: {plain(c['decision'], 1000)}.",
                                                    icon=":material/gavel:")
        if best and best["number"] != c["best"]["number"]:
            st.warning(f"The study has a new best trial ({best['number']}) since this was measured "
                       f"(trial {c['best']['number']}).")
        else:
            return
    if not best or not base or base.get("state") != "COMPLETE":
        st.info("The best trial is compared with the base settings (trial 0) once both have finished.")
        return
    if not c:
        st.caption(f"Best trial {best['number']} ({best['value']:.3f}) against the base settings, trial "
                   f"{base['number']} ({base['value']:.3f}): on validation with a paired CI (this decides), then once "
                   "on held-out. A few minutes per run on a CPU; runs in the background.")
    running = study_job_status(name).get("status") in LIVE
    if st.button("Measure the best trial against the base", key=f"confirm-{name}", disabled=running,
                 help="runs `h2a study confirm` in the background; not while the study's trials run"):
        try:
            start_confirm_job(name)
        except StudyError as exc:
            st.error(f"Not started: {plain(exc, 600)}")
            return
        st.toast("Measuring in the background; the status above follows it.")
        st.rerun()


def show_clusters(clusters: dict | None) -> None:
    if not clusters:
        st.info("The clusters are computed when the study runs; nothing stored yet.")
        return
    frame = clusters_frame(clusters)
    st.dataframe(safe_table(frame.dropna(axis=1, how="all")), hide_index=True, width="stretch")
    st.caption(f"k = {clusters.get('k')} k-means clusters on the UMAP map ('umap') and on the full embedding "
               f"('full'), scored against sex and {clusters.get('band_months', 24)}-month age bands. ARI 0 = chance, "
               "1 = the clusters are the classes.")
    for row in clusters.get("rows") or []:
        if row.get("space") != "full" and row.get("verdict"):
            (st.error if row.get("error") else st.caption)(f"{plain(row['source'])}: {plain(row['verdict'], 1000)}")


def show_charts(name: str, summary: dict) -> None:
    for fig in figures_for(name, _token(summary), summary.get("metric")):
        if fig.figure is None:
            st.caption(f"{fig.title}: {fig.note}.")
        else:
            st.plotly_chart(fig.figure, width="stretch", key=f"study-fig-{fig.key}")


def show_study(name: str) -> None:
    """Everything about one study: live status, findings, charts, arms, clusters, trials."""
    monitor(name)
    try:
        summary = study_summary(name)
    except KeyError:
        st.info(f"Study {plain(name)} has no trials stored yet: it is starting (or failed before creating the "
                "study; see the log above).")
        return
    except (ValueError, OSError) as exc:
        st.error(f"Study {plain(name)} cannot be read: {plain(exc, 600)}")
        return
    if summary.get("description"):
        st.caption(plain(summary["description"], 1000))  # a YAML space's own words
    best = summary.get("best")
    c1, c2, c3 = st.columns(3)
    c1.metric("Trials finished", f"{summary.get('n_finished', 0)} of {summary.get('n_trials', 0)}")
    if best:
        c2.metric(f"Best validation {(summary.get('metric') or '').upper()}", f"{best['value']:.3f}")
        c2.caption(f"trial {best['number']}" + (f" · {plain(best['arm'])}" if best.get("arm") else ""))
    base = summary.get("baseline")
    if base:
        value = "-" if base.get("value") is None else f"{base['value']:.3f}"
        c2.caption(f"the base settings: trial {base['number']}, {value} ({base['state'].lower()})")
    c3.metric("Minutes per trial", f"{summary.get('trial_minutes') or '-'}")
    findings = findings_rows(summary)
    if findings:
        findings = pd.DataFrame(findings, columns=["claim", "measurement", "holds"]).rename(
            columns={"claim": "seed claim", "measurement": "our measurement", "holds": "holds?"})
        st.dataframe(safe_table(findings), hide_index=True, width="stretch")
    names = ["Charts", "Trials"]
    if summary.get("clusters") is not None or summary.get("kind") == "clusters":
        names.insert(0, "Clusters")  # a clusters study has no trials: its table is the answer
    if summary.get("comparisons") or summary.get("reference"):
        names.insert(0, "Arms")
    if summary.get("kind") == "search" and summary.get("baseline"):
        names.insert(0, "Best vs base")
    tab = dict(zip(names, st.tabs(names)))
    if "Best vs base" in tab:
        with tab["Best vs base"]:
            show_confirmation(name, summary)
    if "Arms" in tab:
        with tab["Arms"]:
            show_arms(summary.get("comparisons") or [])
    with tab["Charts"]:
        show_charts(name, summary)
    if "Clusters" in tab:
        with tab["Clusters"]:
            show_clusters(summary.get("clusters"))
    with tab["Trials"]:
        trials = trials_frame(summary)
        st.dataframe(safe_table(trials), hide_index=True, width="stretch")
        st.download_button("Download trials (CSV)", csv_bytes(trials), file_name=f"{name}-trials.csv",
                           mime="text/csv", key=f"trials-csv-{name}")
