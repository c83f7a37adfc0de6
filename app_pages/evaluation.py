"""Evaluation: how good is a bone-age run, where does it fail, where does it look,
and how do runs compare."""

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from h2a.app.charts import SEX_COLORS, hover_ids, style
from h2a.app.cam_ui import cam_of_file, heatmap_caption
from h2a.app.plain import plain, safe_table
from h2a.app.runs_ui import Pending, evaluation_or_pending, pending_status, run_data_fingerprint
from h2a.app.robustness_ui import robustness_section
from h2a.app.sites_ui import sites_section
from h2a.app.state import dataset_at, require_dataset, show_thumb
from h2a.app.training_ui import curves
from h2a.inference.cam import overlay
from h2a.data.datasets import DatasetError
from h2a.data.imageio import ImageReadError
from h2a.engine.runs import list_runs, read_json
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


def _evaluate(name: str):
    """The run's evaluation, or its Pending background job (never computed in this rerun)."""
    data = str(ds.root) if source == "active" else None
    split = "all" if source == "active" else source
    path = by_name[name].path
    sizes = (read_json(path / "metadata.json") or {}).get("split_sizes", {})
    n_hint = int(ds.meta["boneage"].notna().sum()) if source == "active" else sizes.get(source)
    fingerprint = ds.fingerprint if source == "active" else run_data_fingerprint(path)
    try:
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
rows = []
for name, (m, _) in results.items():
    rows.append({"run": name, "n": m["n"], "MAE (mo)": round(m["mae"], 2), "RMSE": round(m["rmse"], 2),
                 "R²": round(m["r2"], 3) if m["r2"] is not None else None,
                 "within 12 mo": f"{100 * m['within_12_months']:.1f}%",
                 "MAE girls": round(m["mae_by_sex"].get("female", np.nan), 2),
                 "MAE boys": round(m["mae_by_sex"].get("male", np.nan), 2),
                 "predict-the-mean MAE": round(m["mae_baseline_mean"], 2),
                 "interval coverage": (f"{100 * m['interval_coverage']:.1f}%"
                                       if m.get("interval_coverage") is not None else None),
                 "mean interval width (mo)": (round(m["interval_width_months"], 1)
                                              if m.get("interval_width_months") is not None else None),
                 "interval": "conformal" if "conformal" in str((m.get("interval_method") or {}).get("method"))
                 else "old rule"})
st.dataframe(safe_table(pd.DataFrame(rows)), hide_index=True, width="stretch")
if len(results) > 1:
    fig = go.Figure()
    for name in results:
        meta = read_json(by_name[name].path / "metadata.json") or {}
        hist = pd.DataFrame(meta.get("history", []))
        if not hist.empty and "val_mae" in hist:
            fig.add_scatter(x=hist["epoch"], y=hist["val_mae"], name=name, mode="lines+markers")
    fig.update_layout(title="Validation MAE per epoch", xaxis_title="epoch", yaxis_title="MAE (months)")
    st.plotly_chart(style(fig), width="stretch")
    bins = pd.DataFrame({name: m["mae_by_age_bin"] for name, (m, _) in results.items()})
    fig = px.bar(bins.reset_index(names="age band"), x="age band", y=list(results), barmode="group",
                 title="MAE by 2-year bone-age band", labels={"value": "MAE (months)", "variable": "run"})
    st.plotly_chart(style(fig), width="stretch")

# ------------------------------------------------------------------ one run in detail
focus = st.selectbox("Run in detail", list(results), key="eval_focus")
metrics, preds = results[focus]
preds = preds.copy()
preds["sex"] = np.where(preds["male"], "male", "female")
st.caption(f"{metrics['n']} images · split: {plain(metrics['split'])} · data: {plain(metrics['data'], 300)}"
           + (f" · {metrics['n_failed_images']} images could not be decoded" if metrics.get("n_failed_images") else ""))

left, right = st.columns(2)
lim = [0, float(max(preds["boneage"].max(), preds["predicted"].max()) + 6)]
shown = hover_ids(preds, "id")  # ids from the label CSV: text in the hover boxes, not Plotly's HTML
fig = px.scatter(shown, x="boneage", y="predicted", color="sex", color_discrete_map=SEX_COLORS, opacity=0.6,
                 hover_data=["id", "error"], labels={"boneage": "true bone age (months)", "predicted": "predicted (months)"},
                 title="Predicted vs true")
fig.add_trace(go.Scatter(x=lim, y=lim, mode="lines", name="identity", line=dict(color="#aaa", dash="dash")))
left.plotly_chart(style(fig), width="stretch")
mean = (preds["boneage"] + preds["predicted"]) / 2
ba = metrics["bland_altman"]  # bias and limits of agreement from the core, as `h2a evaluate --json` reports
limits = "" if ba["sd"] is None else f", limits {ba['loa_low']:+.1f} to {ba['loa_high']:+.1f}"
fig = px.scatter(shown.assign(mean=mean), x="mean", y="error", color="sex", color_discrete_map=SEX_COLORS, opacity=0.6,
                 hover_data=["id"], labels={"mean": "mean of true and predicted (months)", "error": "predicted - true (months)"},
                 title=f"Bland-Altman: bias {ba['bias']:+.1f}{limits}")
for y, dash in ((ba["bias"], "solid"), (ba["loa_low"], "dash"), (ba["loa_high"], "dash")):
    if y is not None:
        fig.add_hline(y=y, line_dash=dash, line_color="#aaa")
right.plotly_chart(style(fig), width="stretch")

left, right = st.columns(2)
by_sex = pd.DataFrame({"sex": list(metrics["mae_by_sex"]), "MAE": list(metrics["mae_by_sex"].values())})
left.plotly_chart(style(px.bar(by_sex, x="sex", y="MAE", color="sex", color_discrete_map=SEX_COLORS,
                               title="MAE by sex (months)")), width="stretch")
coverage = metrics.get("coverage_by_age_bin") or {}
by_bin = pd.DataFrame({"band": list(metrics["mae_by_age_bin"]), "MAE": list(metrics["mae_by_age_bin"].values()),
                       "n": [metrics["n_by_age_bin"][b] for b in metrics["mae_by_age_bin"]],
                       "coverage": [coverage.get(b) for b in metrics["mae_by_age_bin"]],
                       "width": [(metrics.get("width_by_age_bin") or {}).get(b) for b in metrics["mae_by_age_bin"]]})
im = metrics.get("interval_method") or {}
level = float(im.get("level") or 0.95)
fig = go.Figure()
fig.add_bar(x=by_bin["band"], y=by_bin["MAE"], name="MAE (months)", customdata=by_bin[["n"]],
            hovertemplate="%{x}: MAE %{y:.1f} mo (n %{customdata[0]})<extra></extra>")
if coverage:
    fig.add_scatter(x=by_bin["band"], y=100 * by_bin["coverage"].astype(float), name="interval coverage (%)",
                    mode="lines+markers", yaxis="y2", customdata=by_bin[["n", "width"]],
                    hovertemplate="%{x}: coverage %{y:.0f}% of %{customdata[0]} images, mean width "
                                  "%{customdata[1]:.1f} mo<extra></extra>")
    fig.add_scatter(x=by_bin["band"], y=[100 * level] * len(by_bin), name=f"nominal {100 * level:g}%", mode="lines",
                    yaxis="y2", line=dict(color="#aaa", dash="dash"), hoverinfo="skip")
fig.update_layout(title="MAE and interval coverage by 2-year bone-age band", xaxis_title="band (true bone age)",
                  yaxis_title="MAE (months)",
                  yaxis2=dict(title="coverage (%)", overlaying="y", side="right", range=[50, 101], showgrid=False))
right.plotly_chart(style(fig).update_layout(legend=dict(orientation="h", y=-0.3, x=0, xanchor="left")),
                   width="stretch")

st.subheader("Intervals")
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
    table = by_bin.assign(coverage=[None if v is None else f"{100 * v:.0f}%" for v in by_bin["coverage"]],
                          MAE=by_bin["MAE"].round(1), width=by_bin["width"].astype(float).round(1))
    table = table.rename(columns={"MAE": "MAE (mo)", "width": "mean width (mo)"})
    st.dataframe(safe_table(table), hide_index=True, width="stretch")
meta = read_json(by_name[focus].path / "metadata.json") or {}
if meta.get("history"):
    st.plotly_chart(curves(meta["history"], "boneage", "Training curves"), width="stretch")

# ------------------------------------------------------------------ robustness
robustness_section(by_name[focus].path, str(ds.root) if source == "active" else None,
                   "all" if source == "active" else source)

# ------------------------------------------------------------------ worst cases + CAM
st.subheader("Worst cases")
try:
    own = ds if source == "active" else dataset_at(meta["dataset"]["path"])
except DatasetError as exc:  # the run's folder moved: say so, keep the figures above
    st.warning(f"The run's dataset folder cannot be read ({plain(exc, 600)}); no images to show.")
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
