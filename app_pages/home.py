"""Home: what H2A is, which dataset is active, and where each question is answered."""

import streamlit as st

from h2a import RESEARCH_NOTE, __version__
from h2a.app.plain import plain
from h2a.app.state import require_dataset, show_thumb

active = require_dataset()
ds = active.ds

st.title("H2A · Hand-to-Age")
st.markdown(
    "An open tool for exploring pediatric hand radiographs and bone age in the layout of the "
    "**RSNA Pediatric Bone Age Challenge 2017** (or your own data in that layout)."
)
meta = ds.meta
cols = st.columns(4)
cols[0].metric("Images", f"{len(ds.with_images()):,}")
cols[1].metric("Boys / girls", f"{int((meta['male'] == True).sum()):,} / {int((meta['male'] == False).sum()):,}")  # noqa: E712
# split names come from the folder's CSV file names
cols[2].metric("Splits", len(ds.splits), help=plain(", ".join(ds.splits), 400))
cols[3].metric("Problems", len(ds.problems))

# One image per age band: what the dataset looks like at a glance.
labelled = ds.labelled()
if len(labelled):
    picks = []
    for lo in (0, 36, 72, 108, 144, 180):
        band = labelled[(labelled["boneage"] >= lo) & (labelled["boneage"] < lo + 36)]
        if len(band):
            picks.append(band.sample(1, random_state=0).iloc[0])
    strip = st.columns(max(1, len(picks)))
    for col, row in zip(strip, picks):
        with col:  # from the workspace's thumbnail cache: no full-resolution decode per visit
            show_thumb(row["path"], f"{row['boneage']:.0f} months · {'boy' if row['male'] else 'girl'}", side=160)

st.subheader("What you can ask")
LINKS = [
    ("app_pages/population.py", "Population statistics: bone age by sex, splits, resolutions, intensities, gallery, problems",
     ":material/groups:"),
    ("app_pages/preprocessing.py", "Preprocessing preview: resize, crop, contrast, normalisation, augmentation; saved configs",
     ":material/tune:"),
    ("app_pages/training.py", "Bone-age training: background runs with live progress, on the GPU when there is one",
     ":material/model_training:"),
    ("app_pages/evaluation.py", "Bone-age evaluation: MAE by sex and age, Bland-Altman, worst cases, Grad-CAM, run comparison",
     ":material/query_stats:"),
    ("app_pages/sex.py", "Sex from the image: ROC, calibration, AUC by age band, where the model looks",
     ":material/wc:"),
    ("app_pages/clusters.py", "Clusters of CNN embeddings: UMAP + k-means, do clusters follow sex or age?",
     ":material/scatter_plot:"),
    ("app_pages/predict.py", "Predict bone age: upload PNG/JPEG/DICOM, bone age with interval, heatmap, SDS vs Greulich-Pyle, PDF",
     ":material/radiology:"),
]
for page, label, icon in LINKS:
    st.page_link(page, label=label, icon=icon)

st.subheader("Command line")
st.code(
    f"h2a stats --data {ds.root} --json\n"
    "h2a inspect FILE.png FILE.dcm\n"
    f"h2a train --data {ds.root} --out models/my-run --arch efficientnet_lite0 --image-size 128\n"
    "h2a evaluate --model models/my-run --json",
    language="bash", wrap_lines=True,
)
st.caption(f"H2A {__version__}. {RESEARCH_NOTE} RSNA data: Halabi et al., Radiology 2019;290(2):498-503.")
