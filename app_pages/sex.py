"""Sex from the image: can a hand radiograph tell a boy from a girl, and at which ages?"""

import streamlit as st

from h2a.app import sex_charts as sc
from h2a.app.cam_ui import cam_of_file
from h2a.app.plain import plain
from h2a.app.cluster_ui import bands_for, bootstrap_for
from h2a.app.runs_ui import Pending, evaluation_or_pending, pending_status, split_source
from h2a.app.state import dataset_at, require_dataset
from h2a.app.training_ui import curves, new_run_and_pick, show_run
from h2a.inference.cam import overlay
from h2a.data.imageio import ImageReadError
from h2a.run import Run
from h2a.exports import csv_bytes
from h2a.analysis.sex import confident_cases, summary

active = require_dataset()
ds = active.ds

st.title("Sex from the image")
st.caption("A classifier sees only the radiograph (sex is the target, never an input) and outputs P(male). "
           "We measure how well it separates boys from girls, how honest its probabilities are, at which "
           "bone ages it works, and where in the hand it looks.")

# ------------------------------------------------------------------ train or pick a run
run_dir, table = new_run_and_pick(
    "sex", ds, "No sex-classification runs yet. Start one above: on the demo dataset a tiny_cnn at 64 px for 10 "
    "epochs takes about a minute on a CPU. For the RSNA images see the README's CPU recipe.")
run = Run.at(run_dir)
if not run.finished:
    show_run(run_dir, "sex")
    st.stop()
with st.expander("Training progress, curves and log"):
    show_run(run_dir, "sex")

meta = run.meta or {}
sizes = meta.get("split_sizes", {})
options = [s for s in ("holdout", "validation") if sizes.get(s)] + ["active"]
c1, c2 = st.columns([3, 1])
source = c1.radio("Evaluate on", options, horizontal=True, key="sex_source",
                  format_func={"validation": f"the run's validation split ({sizes.get('validation', 0)})",
                               "holdout": f"the run's held-out test split ({sizes.get('holdout', 0)})",
                               "active": f"all images of {plain(ds.name)} with a known sex"}.get)
tta = c2.checkbox("Flip test-time augmentation", key="sex_tta")
try:  # never computed in this rerun: a first evaluation runs in the background
    data, fingerprint = (str(ds.root), ds.fingerprint) if source == "active" else split_source(run_dir, source, ds)
    answer = evaluation_or_pending(
        run_dir, data, fingerprint, "all" if source == "active" else source, tta,
        n_hint=int(ds.meta["male"].notna().sum()) if source == "active" else sizes.get(source))
except (ValueError, FileNotFoundError, KeyError) as exc:
    st.error(f"{plain(run_dir.name)}: {plain(exc, 600)}")
    st.stop()
if isinstance(answer, Pending):
    pending_status([answer])
    st.stop()
metrics, preds = answer
if metrics.get("task") != "sex":
    st.error(f"{plain(run_dir.name)} is not a sex-classification run.")
    st.stop()

y = preds["male"].astype(int).to_numpy()
p = preds["p_male"].to_numpy(dtype=float)
ci = bootstrap_for(tuple(y.tolist()), tuple(p.tolist()))

# ------------------------------------------------------------------ the answer
st.subheader("The answer")
# the evaluated images' kind: the run's own split may be real RSNA images while the demo is active
synthetic = ds.synthetic if source == "active" else bool((meta.get("dataset") or {}).get("synthetic"))
st.info(summary(metrics, ci) + (" (Synthetic demo data, not patients.)" if synthetic else ""),
        icon=":material/lightbulb:")
cols = st.columns(5)
auc_text = "n/a" if ci["auc"] is None else f"{ci['auc']:.3f}"
cols[0].metric("ROC-AUC", auc_text, help="probability that a random boy gets a higher P(male) than a random girl")
cols[1].metric("95% interval", "n/a" if ci["low"] is None else f"{ci['low']:.2f}-{ci['high']:.2f}",
               help=f"percentile bootstrap over {ci['n_boot']} resamples of the images")
cols[2].metric("Accuracy", f"{100 * metrics['accuracy']:.1f}%")
cols[3].metric("Balanced accuracy", "n/a" if metrics.get("balanced_accuracy") is None
               else f"{100 * metrics['balanced_accuracy']:.1f}%")
cols[4].metric("Images (share male)", f"{metrics['n']:,} ({100 * (metrics.get('share_male') or 0):.0f}%)")

# ------------------------------------------------------------------ ROC, confusion, calibration, ages
left, right = st.columns(2)
left.plotly_chart(sc.roc_chart(y, p, auc_text), width="stretch")
right.plotly_chart(sc.confusion_chart(metrics["confusion"]), width="stretch")

left, right = st.columns(2)
left.plotly_chart(sc.bands_chart(bands_for(preds)), width="stretch")
right.plotly_chart(sc.calibration_chart(preds, metrics), width="stretch")
right.caption(f"{plain(metrics.get('calibration', {}).get('method', 'no calibration'), 400)}; expected calibration "
              "error over 15 equal-width bins. Temperature scaling, fitted on the validation split, changes how sure the "
              "probabilities are, never their order (the ROC-AUC is the same).")

st.plotly_chart(sc.p_male_histogram(preds), width="stretch")
if meta.get("history"):
    st.plotly_chart(curves(meta["history"], "sex", "Training curves"), width="stretch")

# ------------------------------------------------------------------ confident cases + CAM
st.subheader("Most confident right and wrong cases")
st.caption("The heat map (Grad-CAM) marks the regions that push the model towards the sex it predicted.")
c1, c2 = st.columns([1, 3])
n_cases = c1.slider("Cases per row", 2, 8, 4, key="sex_cases")
alpha = c2.slider("Heat-map opacity", 0.0, 1.0, 0.45, key="sex_alpha")
try:  # the folder the figures came from
    own = dataset_at(metrics["data"])
except Exception as exc:  # noqa: BLE001 - the folder moved since: say so, keep the rest of the page
    st.warning(f"The evaluated dataset folder cannot be read ({plain(exc, 600)}); no images to show.")
    st.stop()
right_cases, wrong_cases = confident_cases(preds, n_cases)
for title, cases in (("Confidently right", right_cases), ("Confidently wrong", wrong_cases)):
    st.markdown(f"**{title}**")
    if cases.empty:
        st.caption("none")
        continue
    cols = st.columns(n_cases)
    for col, row in zip(cols, cases.itertuples()):
        path = own.path_of(row.id)
        if path is None:
            col.error(f"{plain(row.id)}: image not found")
            continue
        try:  # evidence for the predicted sex (negative = toward female); cached, so the
            # opacity slider only re-blends
            u8, heat = cam_of_file(run_dir, path, negative=bool(row.p_male < 0.5))
        except (ImageReadError, ValueError) as exc:
            col.error(f"{plain(row.id)}: {plain(exc, 600)}")
            continue
        col.image(overlay(u8, heat, alpha=alpha), width="stretch",
                  caption=f"{plain(row.id)}: {'boy' if row.male else 'girl'}, P(male) {row.p_male:.2f}, "
                          f"{row.boneage:.0f} mo")

st.download_button("Download predictions (CSV)", csv_bytes(preds),
                   file_name=f"{run_dir.name}-sex-predictions.csv", mime="text/csv", key="sex_download")
