"""App-layer helpers for the sex and clusters pages: the clustering settings' widgets (built
from ``ClusterConfig``'s declarations), the clusters background job (ask, watch, cancel,
read its answer), the image grid for selected points and the composition tables. The
figures are in ``h2a.app.cluster_charts``; sex-evidence CAMs come from ``h2a.app.cam_ui``.

Embeddings, UMAP and k-means run as a background job (``h2a.analysis.cluster_jobs``): the
page only asks for it and returns; a fragment polls its progress. A finished job's answer
is read once per server process with ``st.cache_data`` keyed by the job folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from h2a.analysis.background import LIVE, RESULT, Job, find_job, force_stop, request_cancel, start_job
from h2a.analysis.cluster_config import ClusterConfig
from h2a.analysis.cluster_jobs import clusters_spec, load_clusters
from h2a.analysis.embeddings import PRETRAINED
from h2a.analysis.sex import bootstrap_auc, by_age_band
from h2a.app.option_widgets import option_widget
from h2a.app.plain import plain
from h2a.app.state import thumb_for
from h2a.options import declarations
from h2a.run import resolve_run

SOURCE_PRETRAINED = PRETRAINED


# ---------------------------------------------------------------- settings

# The ClusterConfig fields the page shows, in declaration order, each under the session-state
# key "cl_<field>": widget kind, label, help, range and default all come from the declaration.
SETTING_FIELDS = tuple(d.name for d in declarations(ClusterConfig) if d.opt.form is not False)


def setting_key(name: str) -> str:
    """The session-state / widget key of ClusterConfig field ``name`` on the Clusters page."""
    return f"cl_{name}"


def setting_defaults() -> dict[str, Any]:
    """Widget key -> the declared default, for each field on the page."""
    return {setting_key(d.name): d.default for d in declarations(ClusterConfig) if d.name in SETTING_FIELDS}


def settings_widgets(containers: Sequence[Any]) -> ClusterConfig:
    """One widget per shown ClusterConfig field, the i-th in ``containers[i]`` (columns of a
    form); returns the settings as a ClusterConfig."""
    if len(containers) != len(SETTING_FIELDS):
        raise ValueError(f"{len(SETTING_FIELDS)} containers wanted (one per setting), got {len(containers)}")
    return ClusterConfig(**{name: option_widget(box, ClusterConfig, name, key=setting_key(name))
                            for box, name in zip(containers, SETTING_FIELDS)})


# ---------------------------------------------------------------- background jobs

POLL_S = 2.0  # how often a running job's progress is redrawn
FORCE_AFTER_S = 15.0  # a cancel not honoured after this long offers "Stop now" (SIGTERM)


def clusters_job(ds, source: str, preprocess, config: ClusterConfig, *, restart: bool = False,
                 start: bool = True) -> Job:
    """The clusters job for these inputs: attached to when it runs or has finished, started
    when nobody asked yet (``start``), started again when failed/stopped and ``restart``.

    Cheap: a key hash and a few small files; the work happens in the job's own process."""
    src = source if source == SOURCE_PRETRAINED else str(resolve_run(source))
    spec = clusters_spec(ds, src, preprocess, config)
    job = find_job(spec)
    if restart or (start and job.status().get("status") == "missing"):
        job = start_job(spec, restart=restart)
    return job


def _result_stamp(job) -> float:
    try:
        return (job.dir / RESULT).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=16)
def _load_clusters(job_dir: str, stamp: float):
    return load_clusters(Job(Path(job_dir)))


def clusters_result(job):
    """(frame, scores, sweep, result) of a finished job, shared by every session (cached by
    the job folder and its result's time), or None while there is none."""
    return _load_clusters(str(job.dir), _result_stamp(job))


def duration(seconds) -> str:
    """'42 s', '3 min 5 s', '1 h 02 min' (an ETA or an elapsed time)."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def progress_text(prog: dict) -> str:
    """'embeddings: tensor cache · 1,200/12,611 · 41.3 images/s · ETA 4 min 36 s'."""
    parts = [prog.get("stage") or "starting"]
    done, total = prog.get("done") or 0, prog.get("total") or 0
    if total:
        parts.append(f"{done:,}/{total:,}")
    if prog.get("rate"):
        parts.append(f"{prog['rate']:,.1f}/s")
    if prog.get("eta_s") is not None and total and done < total:
        parts.append(f"ETA {duration(prog['eta_s'])}")
    elif prog.get("status") == "running":
        parts.append("no ETA inside this step")
    return " · ".join(p for p in parts if p)


@st.fragment(run_every=POLL_S)
def job_progress(job_dir: str) -> None:
    """A running job's stage, bar, ETA and Cancel button, redrawn every POLL_S seconds.

    Only this fragment reruns while the job works; when the job ends it reruns the whole
    page, which then shows the result (or the failure)."""
    job = Job(Path(job_dir))
    prog = job.status()
    if prog.get("status") not in LIVE:
        st.rerun()
    done, total = prog.get("done") or 0, prog.get("total") or 0
    st.progress(min(1.0, done / total) if total else 0.0, text=progress_text(prog))
    elapsed, started = prog.get("elapsed_s"), prog.get("started")
    if not isinstance(elapsed, (int, float)) and isinstance(started, (int, float)):
        elapsed = time.time() - started
    since = f" · running for {duration(elapsed)}" if isinstance(elapsed, (int, float)) else ""
    st.caption(f"Background job `{job.name}`{since} · it keeps going if you leave this page or close the tab; "
               "anyone asking for the same map watches this job.")
    asked = prog.get("cancel_requested_at")
    if asked is not None:
        st.caption("Cancelling: the job stops after its current batch…")
        if time.time() - asked > FORCE_AFTER_S and st.button(
                "Stop now", key="cl_force",
                help="SIGTERM the job's processes: its current step reports no progress, so it cannot stop by itself"):
            force_stop(job)
    elif st.button("Cancel", key="cl_cancel_job", icon=":material/cancel:"):
        request_cancel(job)
        st.caption("Cancelling: the job stops after its current batch…")


# ---------------------------------------------------------------- selection and tables

def selected_ids(event) -> list[str]:
    """Image ids of the points selected in a ``st.plotly_chart(on_select=...)`` event."""
    try:
        points = event.selection.points
    except AttributeError:
        return []
    out = []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)) and cd:
            out.append(str(cd[0]))
        elif cd is not None:
            out.append(str(cd))
    return list(dict.fromkeys(out))


def image_grid(ids: list[str], paths: pd.Series, info: pd.DataFrame, columns: int = 8, limit: int = 48) -> None:
    """Thumbnails of the given ids with id, sex, bone age and cluster as captions."""
    shown = ids[:limit]
    if len(ids) > limit:
        st.caption(f"Showing {limit} of {len(ids)} selected images.")
    cols = st.columns(columns)
    for i, ident in enumerate(shown):
        with cols[i % columns]:
            path = paths.get(ident)
            thumb = thumb_for(path, side=160) if isinstance(path, str) else "image not found"
            row = info.loc[ident] if ident in info.index else None
            caption = ident if row is None else f"{ident} · {row['sex']} · {row['boneage']:.0f} mo · c{row['cluster']}"
            if isinstance(thumb, str):  # ids come from the label CSV: text, not Markdown
                st.error(f"{plain(ident)}: {plain(thumb, 600)}")
            else:
                st.image(thumb, caption=plain(caption), width="stretch")


def composition_table(scores: dict) -> pd.DataFrame:
    rows = []
    for c in scores["clusters"]:
        rows.append({"cluster": c["cluster"], "images": c["size"],
                     "% male": None if c["share_male"] is None else round(100 * c["share_male"], 1),
                     "age mean (mo)": None if c["boneage_mean"] is None else round(c["boneage_mean"], 1),
                     "age sd": None if c["boneage_sd"] is None else round(c["boneage_sd"], 1),
                     "age range": "" if c["boneage_min"] is None
                     else f"{c['boneage_min']:.0f}-{c['boneage_max']:.0f}"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- sex page

@st.cache_data(show_spinner=False, max_entries=64)
def bootstrap_for(y: tuple, p: tuple, n: int = 1000, seed: int = 0) -> dict:
    return bootstrap_auc(np.asarray(y), np.asarray(p), n=n, seed=seed)


@st.cache_data(show_spinner=False, max_entries=32)
def bands_for(preds: pd.DataFrame) -> pd.DataFrame:
    return by_age_band(preds)
