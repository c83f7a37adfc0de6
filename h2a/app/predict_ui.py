"""App-layer helpers for the predict page: the cached predictor and predictions, the
result view (numbers, image next to the heat map, clinical chart, PDF), the batch table,
and the offer to train a quick demo model when no bone-age run exists yet.

Compute lives in ``h2a.predict.predictor`` / ``h2a.predict.clinical`` / ``h2a.predict.report``; this module only
caches it and draws it. Warnings are coded (``h2a.predict.alerts``): the page decides by
``code``, never by the wording of a message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import date
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from h2a import RESEARCH_NOTE
from h2a.app.charts import style
from h2a.app.plain import plain, safe_table
from h2a.run import FINAL_STATES, MODEL, RunSummary, list_runs, weights_file
from h2a.predict.alerts import FLAGGING, Alert, Code, flagged
from h2a.predict.clinical import REFERENCE_LIMITS, REFERENCE_STATEMENT, reference_band
from h2a.predict.inputs import header_facts
from h2a.predict.predictor import AUTO_SITE, PredictionResult, Predictor
from h2a.server import heavy_work
from h2a.settings import get_settings
from h2a.app.state import sidebar_dataset
from h2a.app.training_ui import show_run
from h2a.data.preprocess import PreprocessConfig
from h2a.engine.config import TrainConfig
from h2a.engine.jobs import JobError, start_training
from h2a.inference.cam import overlay
from h2a.inference.model_card import CARD
from h2a.inference.site_profile import list_sites
from h2a.predict.report import clinical_rows, coverage_text, interval_rows, pdf_report, site_text

LOG = logging.getLogger("h2a.predict_ui")
SEXES = ["female", "male"]


# ---------------------------------------------------------------- runs and the cached predictor

def bone_age_runs() -> list[RunSummary]:
    """Finished bone-age runs, best validated (lowest MAE) first; runs on real images (the
    shipped ones included) before runs on the synthetic demo (``h2a.run.best_run``'s order)."""
    done = [r for r in list_runs(task="boneage") if r.has_model]
    return sorted(done, key=lambda r: (r.synthetic, r.headline is None,
                                       r.headline if r.headline is not None else 0.0))


def run_label(r: RunSummary) -> str:
    mae = f"val MAE {r.headline:.1f} mo" if r.headline is not None else "no validation MAE"
    tag = " · shipped" if r.shipped else (" · synthetic demo" if r.synthetic else "")
    return f"{r.name} · {r.arch} · {mae}{tag}"


SITE_AUTO_LABEL = "auto (recommended)"


def site_options(paths: list[Path]) -> list[str]:
    """The site choices for these runs: auto, none, and the sites every one of them has."""
    common = set(list_sites(paths[0])) if paths else set()
    for p in paths[1:]:
        common &= set(list_sites(p))
    return [SITE_AUTO_LABEL, "none", *sorted(common)]


def site_value(label: str) -> str:
    """The Predictor's ``site`` for a choice of ``site_options``."""
    return AUTO_SITE if label == SITE_AUTO_LABEL else label


def model_card(path: Path) -> str | None:
    """A shipped run's model card (README.md), if it has one."""
    try:
        return (Path(path) / CARD).read_text()
    except OSError:
        return None


def run_key(paths: list[Path]) -> tuple[tuple[str, int], ...]:
    """Cache key: run folders + model.pt mtimes (a retrained run gets a fresh predictor)."""
    out = []
    for p in paths:
        try:
            out.append((str(p), (weights_file(Path(p)) or Path(p) / MODEL).stat().st_mtime_ns))
        except OSError:
            out.append((str(p), 0))
    return tuple(out)


@st.cache_resource(show_spinner=False, max_entries=4)
def _predictor(key: tuple[tuple[str, int], ...], site: str = AUTO_SITE, backend: str = "torch") -> Predictor:
    # Streamlit computes one key once even when sessions ask at the same moment; the
    # load is heavy work too, so it queues behind running predictions.
    with heavy_work():
        predictor = Predictor([k[0] for k in key], site=site, backend=backend)
        predictor.prepare_ood()
        predictor.warmup()
    LOG.info("model loaded: %s (pid %d)", ", ".join(k[0] for k in key), os.getpid())
    return predictor


def get_predictor(paths: list[Path], site: str = AUTO_SITE, backend: str = "torch") -> Predictor:
    """The loaded run(s), once per server (cached); the first load shows a spinner."""
    with st.spinner("Loading the model and its training-data reference (once per run)…"):
        return _predictor(run_key(paths), site, backend)


@st.cache_data(show_spinner=False, max_entries=256)
def _predict(key: tuple, digest: str, name: str, sex: str | None, dob: date | None, exam_date: date | None,
             age_months: float | None, tta: int, _data: bytes, site: str = AUTO_SITE,
             backend: str = "torch") -> PredictionResult:
    predictor = _predictor(key, site, backend)
    # Only a cache miss gets here: decode + model hold a process-wide slot, so N sessions
    # uploading at once queue instead of multiplying the peak memory.
    with heavy_work():
        return predictor.predict_image(_data, name=name, sex=sex, dob=dob, exam_date=exam_date,
                                       age_months=age_months, tta=tta, cam=True)


def predict(paths: list[Path], data: bytes, name: str, *, sex: str | None, dob: date | None,
            exam_date: date | None, age_months: float | None, tta: int, site: str = AUTO_SITE,
            backend: str = "torch") -> PredictionResult:
    """One file's result, cached by (runs, site, backend, file bytes, inputs): widget reruns are free."""
    key = run_key(paths)
    get_predictor(paths, site, backend)
    return _predict(key, digest(data), name, sex, dob, exam_date, age_months, int(tta), data, site, backend)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@st.cache_data(show_spinner=False, max_entries=512)
def prefill(digest_: str, name: str, _data: bytes) -> dict:
    """Sex and dates a DICOM header offers (non-identifying facts only)."""
    return header_facts(_data, name)


# ---------------------------------------------------------------- no model yet

DEMO_PRESETS = {
    "Quick: tiny CNN, 96 px, 8 epochs (about a minute on a CPU)":
        dict(arch="tiny_cnn", pretrained=False, size=96, epochs=8, lr=3e-3),
    "Better: EfficientNet-Lite0 with ImageNet weights, 128 px, 6 epochs (several minutes on a CPU)":
        dict(arch="efficientnet_lite0", pretrained=True, size=128, epochs=6, lr=1e-3),
}


def offer_demo_training() -> None:
    """Say that no bone-age model exists and offer to train one in the background."""
    settings = get_settings()
    running = [r for r in list_runs(task="boneage") if r.status not in FINAL_STATES + ("stopped", "unknown")]
    current = st.session_state.get("predict_demo_run")
    st.warning("There is no trained bone-age model yet, so nothing can be predicted. Train a quick model "
               "below (it runs in the background; you can leave this page), or use the training page.",
               icon=":material/model_training:")
    active = sidebar_dataset()
    if current is None and not running:
        if active.ds is None:
            st.info("Pick a dataset in the sidebar to train on.")
            return
        preset = st.radio("Quick model", list(DEMO_PRESETS), key="predict_demo_preset")
        where = "the synthetic demo dataset" if active.ds.synthetic else f"**{plain(active.ds.name)}**"
        st.caption(f"Trains on {where} ({len(active.ds.labelled()):,} labelled images)."
                   + (" A model trained on synthetic images is only a demonstration: its numbers mean "
                      "nothing for real radiographs." if active.ds.synthetic else ""))
        if st.button("Train a quick model in the background", type="primary", key="predict_demo_train"):
            p = DEMO_PRESETS[preset]
            name = f"quick-{p['arch'].replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
            cfg = TrainConfig(data=str(active.ds.root), out=str(settings.models_dir / name), task="boneage",
                              arch=p["arch"], pretrained=p["pretrained"],
                              preprocess=PreprocessConfig(size=p["size"]).to_dict(), epochs=p["epochs"],
                              batch_size=32, lr=p["lr"], workers=min(2, settings.workers))
            try:
                current = str(start_training(cfg))
            except (JobError, ValueError, RuntimeError) as exc:
                st.error(plain(exc, 600))
                return
            st.session_state["predict_demo_run"] = current
        else:
            return
    target = Path(current) if current else running[0].path
    st.subheader("Training")
    show_run(target, "boneage")


# ---------------------------------------------------------------- one result

def bone_age_chart(res: PredictionResult) -> go.Figure:
    """BA vs CA in years: CA +/- 2 SD band (what the SDS rule uses), GP mean, BA = CA, the patient."""
    a = res.assessment
    male = res.sex == "male"
    band = reference_band(male)
    ca = band["ca"] / 12
    fig = go.Figure()
    fig.add_scatter(x=ca, y=band["high"] / 12, mode="lines", line=dict(width=0), showlegend=False,
                    hoverinfo="skip")
    fig.add_scatter(x=ca, y=band["low"] / 12, mode="lines", line=dict(width=0), fill="tonexty",
                    fillcolor="rgba(90,170,90,0.25)", name=f"normal limits: CA ± 2 SD ({'boys' if male else 'girls'})")
    fig.add_scatter(x=ca, y=band["mean"] / 12, mode="lines", line=dict(color="#2b7a2b", width=2),
                    name="Greulich-Pyle mean skeletal age")
    top = max(19.0, a.ca_months / 12 + 1, res.interval_months[1] / 12 + 0.5)
    fig.add_scatter(x=[0, top], y=[0, top], mode="lines", line=dict(color="#999", dash="dash", width=1),
                    name="bone age = chronological age")
    lo, hi = res.interval_months
    ba = res.bone_age_months
    fig.add_scatter(x=[a.ca_months / 12], y=[ba / 12], mode="markers", name="this image (95% interval)",
                    marker=dict(color="#c81e1e", size=12),
                    error_y=dict(type="data", symmetric=False, array=[(hi - ba) / 12], arrayminus=[(ba - lo) / 12],
                                 color="#c81e1e", thickness=2),
                    hovertemplate=f"CA {a.ca_months / 12:.1f} y<br>BA {ba / 12:.1f} y<br>SDS {a.sds:+.2f}<extra></extra>")
    fig.update_xaxes(title_text="chronological age (years)", range=[0, top])
    fig.update_yaxes(title_text="bone age (years)", range=[0, top + 1])
    return style(fig, height=420)


def _numbers_frame(res: PredictionResult) -> pd.DataFrame:
    rows = clinical_rows(res, short=True)
    if res.assessment is None:
        rows = rows[:1]  # the page says "no chronological age" in its own panel
    rows += interval_rows(res, short=True)[1:]  # the interval itself is a metric above
    rows.append(("TTA SD", f"{res.tta_sd_months:.2f} mo ({res.tta} copies)"))
    if res.rmse_months is not None:
        rows.append(("Validation RMSE", f"{res.rmse_months:.2f} mo"))
    return pd.DataFrame(rows, columns=["", "value"])


def interval_help(res: PredictionResult) -> str:
    """What the interval is, in words, for the metric's tooltip and the caption under the numbers."""
    if res.interval_source == "conformal":
        return ("Split-conformal interval: the half-width is the quantile of the run's validation errors for "
                f"images in this predicted-age band and sex. {plain(res.interval_method, 400)}.")
    return ("Old rule: the test-time augmentation spread, never narrower than the run's validation RMSE. "
            "How often it covers the true bone age was never measured: run h2a calibrate on this run.")


def show_alerts(alerts: list[Alert]) -> None:
    """One box per alert, chosen by its code: an error box when the estimate may be meaningless.
    Messages quote the file (its name, DICOM tags), so they are shown as plain text."""
    for w in alerts:
        if w.code in FLAGGING:  # the estimate may be meaningless: an error box
            st.error(plain(w.message, 1000), icon=":material/report:")
        else:
            st.warning(plain(w.message, 1000), icon=":material/warning:")


def show_result(res: PredictionResult, key: str) -> None:
    """Everything about one file: warnings first, the numbers, image and heat map, context, PDF."""
    if not res.ok:
        st.error(f"**{plain(res.file)}**: {plain(res.error, 1000)}", icon=":material/error:")
        return
    show_alerts(res.warnings)
    a = res.assessment
    lo, hi = res.interval_months
    c = st.columns(4)
    c[0].metric("Bone age (months)", f"{res.bone_age_months:.1f}", help="mean of the test-time augmented predictions")
    years, months = divmod(int(round(res.bone_age_months)), 12)
    c[1].metric("Bone age (years)", f"{years} y {months} mo")
    level = 100 * (res.interval_level or 0.95)
    c[2].metric(f"{level:g}% interval (months)", f"{lo:.0f}–{hi:.0f}", help=interval_help(res))
    if a is not None:
        c[3].metric("SDS", f"{a.sds:+.2f}", a.classification, delta_color="off",
                    help="(bone age - chronological age) / Greulich-Pyle SD at that age and sex")
    else:
        c[3].metric("SDS", "–", help="enter a date of birth and exam date (or the age) for the SDS")

    left, mid, right = st.columns([1, 1, 1.15])
    with left:
        st.image(res.image, caption=f"{plain(res.file)} · {res.original_size[0]} x {res.original_size[1]} px",
                 width="stretch")
    with mid:
        if res.cam is not None:
            alpha = st.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key=f"alpha-{key}")
            st.image(overlay(res.image, res.cam, alpha), width="stretch",
                     caption="Grad-CAM: regions that push the estimate older"
                             + (" (mean over the ensemble)" if len(res.model_runs) > 1 else ""))
        else:
            alpha = 0.45
    with right:
        st.markdown("**Clinical context**")
        if a is not None:
            cls = a.classification
            (st.success if cls == "within normal limits" else st.info)(
                f"**{cls.capitalize()}**: SDS {a.sds:+.2f}; bone age {a.ba_minus_ca_months:+.1f} months "
                f"({a.ba_minus_ca_years:+.2f} y) from chronological age.")
        else:
            st.info("No chronological age: enter the date of birth and exam date (or the age at the exam) to "
                    "compare the bone age with the Greulich-Pyle reference.")
        numbers = _numbers_frame(res)
        # the values are our own figures ("+26.2 mo"); the file's text in them never leads a cell
        st.dataframe(safe_table(numbers, own=("value",)), hide_index=True, width="stretch",
                     height=35 * (len(numbers) + 1) + 3)

    # site and run names are folder names, the interval method is read from the run's files
    st.caption(f"**Site profile**: {plain(site_text(res), 400)}. **Interval**: {plain(res.interval_method, 400)}. "
               f"**Measured coverage**: {plain(coverage_text(res), 400)}.")

    if a is not None:
        cc = st.columns([3, 2])
        cc[0].plotly_chart(bone_age_chart(res), width="stretch", key=f"chart-{key}")
        cc[1].caption(f"{REFERENCE_STATEMENT} {REFERENCE_LIMITS} The band is chronological age ± 2 SD, the "
                      f"limits the classification uses; the line is the atlas's mean skeletal age. {RESEARCH_NOTE}")
    else:
        st.caption(f"{REFERENCE_STATEMENT} {REFERENCE_LIMITS} {RESEARCH_NOTE}")
    info = "; ".join(f"{m['run']} ({m['arch']}, {m['image_size']} px, val MAE "
                     f"{m['val_mae'] if m['val_mae'] is None else round(m['val_mae'], 1)} mo"
                     f"{', SYNTHETIC training data' if m['synthetic'] else ''})" for m in res.model_info)
    st.caption(f"Model: {plain(info, 1000)}. Timing: "
               + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in res.timings.items()))

    c1, c2 = st.columns([2, 1])
    label = c1.text_input("Label to print on the PDF (optional)", key=f"label-{key}",
                          placeholder="e.g. a study code; avoid names",
                          help="Only what you type here appears on the report; no DICOM identifiers are used.")
    c2.download_button("Download PDF report", data=lambda: pdf_report(res, patient_label=label, alpha=alpha),
                       file_name=f"{Path(res.file).stem}-bone-age.pdf", mime="application/pdf",
                       key=f"pdf-{key}", on_click="ignore", icon=":material/picture_as_pdf:")


def results_frame(results: list[PredictionResult]) -> pd.DataFrame:
    """The batch table: one row per file, the error in place of numbers for a failed one."""
    rows = []
    for r in results:
        a = r.assessment
        rows.append({
            "file": r.file,
            "sex": r.sex,
            "age (mo)": round(r.chronological_age_months, 1) if r.chronological_age_months is not None else None,
            "bone age (mo)": round(r.bone_age_months, 1) if r.ok else None,
            "interval": f"{r.interval_months[0]:.0f}–{r.interval_months[1]:.0f}" if r.ok else None,
            "interval method": ("conformal" if r.interval_source == "conformal" else "old rule") if r.ok else None,
            "SDS": round(a.sds, 2) if a else None,
            "class": a.classification if a else None,
            "warnings": ", ".join(w.code for w in r.warnings) if r.ok else None,
            "warnings in words": "; ".join(w.message for w in r.warnings) if r.ok else None,
            "OOD": ("yes" if any(w.code == Code.OUT_OF_DISTRIBUTION for w in r.warnings) else "no")
            if r.ok else None,
            "flagged": ("yes" if flagged(r.warnings) else "no") if r.ok else None,
            "error": r.error,
        })
    return pd.DataFrame(rows)
