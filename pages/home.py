"""Home: what H2A is, which dataset is active, and where each question is answered."""

import streamlit as st

from h2a import RESEARCH_NOTE, __version__
from h2a.app.state import require_dataset

active = require_dataset()
ds = active.ds

st.title("H2A · Hand-to-Age")
st.markdown(
    "An open tool for exploring pediatric hand radiographs and bone age in the layout of the "
    "**RSNA Pediatric Bone Age Challenge 2017** (or your own data in that layout)."
)
cols = st.columns(4)
cols[0].metric("Images", f"{len(ds.with_images()):,}")
cols[1].metric("Labelled rows", f"{int(ds.meta['boneage'].notna().sum()):,}")
cols[2].metric("Splits", ", ".join(ds.splits))
cols[3].metric("Problems", len(ds.problems))

st.subheader("Pages")
st.page_link("pages/population.py", label="Population statistics: bone age by sex, splits, resolutions, gallery",
             icon=":material/groups:")
st.page_link("pages/preprocessing.py", label="Preprocessing preview: resize, crop, contrast, normalisation, augmentation",
             icon=":material/tune:")

st.subheader("Command line")
st.code(
    f"python -m h2a stats --data {ds.root} --json\n"
    f"python -m h2a inspect FILE.png FILE.dcm\n"
    f"python -m h2a cache --data {ds.root} --image-size 256 --contrast clahe",
    language="bash",
)
st.caption(f"H2A {__version__}. {RESEARCH_NOTE} RSNA data: Halabi et al., Radiology 2019;290(2):498-503.")
