"""Evaluation: how good is a bone-age run, where does it fail, where does it look,
and how do runs compare."""

import numpy as np
import streamlit as st

from h2a.app import eval_charts as ec
from h2a.app.cam_ui import cam_of_file, heatmap_caption
from h2a.app.plain import plain, safe_table
from h2a.app.runs_ui import Pending, evaluation_or_pending, pending_status, split_source
from h2a.app.robustness_ui import robustness_section
from h2a.app.sites_ui import sites_section
from h2a.app.state import dataset_at, require_dataset, show_thumb
from h2a.app.training_ui import curves
from h2a.inference.cam import overlay
from h2a.data.datasets import DatasetError
from h2a.data.imageio import ImageReadError
from h2a.run import Run, list_runs
from h2a.exports import csv_bytes

active = require_dataset()
ds = active.ds

st.title("Bone-age evaluation")
runs = [r for r in list_runs(task="boneage") if r.has_model]
if not runs:
    st.info("No finished bone-age run yet: train one on the Bone-age training page.")
    st.stop()

names = [r.name for r in runs]
by_name = {r.name: r for r in runs}
picked = st.multiselect("Runs (two or more to compare)", names, default=names[:1], key="eval_runs")
if not picked:
    st.stop()
sites_section([by_name[n].path for n in picked])
c1, c2 = st.columns([3, 1])
source = c1.radio("Evaluate on", ["validation", "holdout", "active"], horizontal=True, key="eval_source",
                  format_func={"validation": "the run's validation split", "holdout": "the run's held-out test split",
                               "active": f"all labelled images of {plain(ds.name)}"}.get)
tta = c2.checkbox("Flip test-time augmentation", key="eval_tta")
views = int(c2.number_input("Augmented copies", 0, 32, 0, key="eval_views",
                            help="Also average this many copies drawn with the run's own augmentation ranges "
                                 "(seeded, so the figure is reproducible; each copy costs one more forward pass). "
                                 "On the CPU recipe run's validation split, with the mirror: 0 copies MAE 9.8, "
                                 "8 copies 9.3, 16 copies 9.2 months."))


data_of: dict[str, str | None] = {}  # where each run's figures were read from (None: its own folder)


def _evaluate(name: str):
    """The run's evaluation, or its Pending background job (never computed in this rerun)."""
    split = "all" if source == "active" else source
    path = by_name[name].path
    sizes = (Run.at(path).meta or {}).get("split_sizes", {})
    n_hint = int(ds.meta["boneage"].notna().sum()) if source == "active" else sizes.get(source)
    try:
        data, fingerprint = (str(ds.root), ds.fingerprint) if source == "active" else split_source(path, source, ds)
        data_of[name] = data
        return evaluation_or_pending(path, data, fingerprint, split, tta, views, n_hint=n_hint)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        st.error(f"{plain(name)}: {plain(exc, 600)}")
        return None


answers = {name: r for name in picked if (r := _evaluate(name)) is not None}
pending = [r for r in answers.values() if isinstance(r, Pending)]
if pending:
    pending_status(pending)
results = {name: r for name, r in answers.items() if not isinstance(r, Pending)}
if not results:
    st.stop()

# ------------------------------------------------------------------ comparison
run_metrics = {name: m for name, (m, _) in results.items()}
st.dataframe(safe_table(ec.comparison_table(run_metrics)), hide_index=True, width="stretch")
if len(results) > 1:
    histories = {name: (Run.at(by_name[name].path).meta or {}).get("history", []) for name in results}
    st.plotly_chart(ec.val_mae_curves(histories), width="stretch")
    st.plotly_chart(ec.mae_by_band_runs(run_metrics), width="stretch")

# ------------------------------------------------------------------ one run in detail
focus = st.selectbox("Run in detail", list(results), key="eval_focus")
metrics, preds = results[focus]
preds = preds.copy()
preds["sex"] = np.where(preds["male"], "male", "female")
st.caption(f"{metrics['n']} images · split: {plain(metrics['split'])} · data: {plain(metrics['data'], 300)}"
           + (f" · {metrics['n_failed_images']} images could not be decoded" if metrics.get("n_failed_images") else ""))

left, right = st.columns(2)
left.plotly_chart(ec.predicted_vs_true(preds), width="stretch")
right.plotly_chart(ec.bland_altman(preds, metrics["bland_altman"]), width="stretch")
left, right = st.columns(2)
left.plotly_chart(ec.mae_by_sex(metrics), width="stretch")
right.plotly_chart(ec.band_coverage(metrics), width="stretch")

st.subheader("Intervals")
im, level = metrics.get("interval_method") or {}, ec.interval_level(metrics)
if metrics.get("interval_coverage") is not None:
    c = st.columns(3)
    c[0].metric("Interval coverage", f"{100 * metrics['interval_coverage']:.1f}%",
                help=f"share of images whose true bone age lies inside the interval (nominal {100 * level:g}%)")
    c[1].metric("Mean width", f"{metrics['interval_width_months']:.1f} mo")
    legacy = metrics.get("interval_legacy") or {}
    if legacy and "conformal" in str(im.get("method")):
        c[2].metric("Old rule on the same images", f"{100 * legacy['interval_coverage']:.1f}%",
                    f"width {legacy['interval_width_months']:.1f} mo", delta_color="off",
                    help="estimate ± 1.96 × max(TTA SD, validation RMSE): the rule before conformal intervals")
    st.caption(f"Method: {plain(im.get('method'), 400)}. Groups: {plain(im.get('grouping'), 400)}. Calibrated "
               f"procedure: {plain(im.get('procedure_text') or im.get('procedure'), 400)}.")  # the run's files
    for note in (im.get("note"), im.get("in_sample_note")):
        if note:
            st.warning(plain(note, 1000), icon=":material/info:")
    st.dataframe(safe_table(ec.band_table(metrics)), hide_index=True, width="stretch")
meta = Run.at(by_name[focus].path).meta or {}
if meta.get("history"):
    st.plotly_chart(curves(meta["history"], "boneage", "Training curves"), width="stretch")

# ------------------------------------------------------------------ robustness
robustness_section(by_name[focus].path, data_of[focus], "all" if source == "active" else source)

# ------------------------------------------------------------------ worst cases + CAM
st.subheader("Worst cases")
try:
    own = dataset_at(metrics["data"])  # the folder the figures came from
except DatasetError as exc:  # it moved since: say so, keep the figures above
    st.warning(f"The evaluated dataset folder cannot be read ({plain(exc, 600)}); no images to show.")
    st.stop()
worst = preds.head(12)
cols = st.columns(6)
for i, row in enumerate(worst.itertuples()):
    with cols[i % 6]:
        show_thumb(own.path_of(row.id),
                   f"{row.id}: true {row.boneage:.0f}, pred {row.predicted:.0f} ({row.error:+.0f})")

st.subheader("Where the model looks (Grad-CAM)")
st.caption(heatmap_caption(by_name[focus].path))
cam_ids = st.multiselect("Images", preds["id"].astype(str).tolist(), default=preds["id"].astype(str).tolist()[:3],
                         max_selections=6, key="eval_cam_ids")
alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, key="eval_cam_alpha")
if cam_ids:
    cols = st.columns(len(cam_ids))
    for col, ident in zip(cols, cam_ids):
        row = preds[preds["id"].astype(str) == ident].iloc[0]
        path = own.path_of(ident)
        if path is None:
            col.error(f"{plain(ident)}: image not found")
            continue
        try:  # cached per (run, image, sex): moving the opacity slider only re-blends
            u8, heat = cam_of_file(by_name[focus].path, path, bool(row.male))
        except ImageReadError as exc:
            col.error(f"{plain(ident)}: {plain(exc, 600)}")
            continue
        col.image(overlay(u8, heat, alpha=alpha), caption=f"{plain(ident)}: pred {row.predicted:.0f} mo",
                  width="stretch")

st.download_button("Download predictions (CSV)", csv_bytes(preds), file_name=f"{focus}-predictions.csv",
                   mime="text/csv")
