"""Bone-age training: start runs in the background, watch them live, see every run."""

import streamlit as st

from h2a.app.plain import plain, safe_table
from h2a.app.state import require_dataset
from h2a.app.training_ui import new_run_and_pick, show_run
from h2a.settings import get_settings

active = require_dataset()
ds = active.ds

st.title("Bone-age training")
st.caption(f"Dataset **{plain(ds.name)}**: {len(ds.labelled()):,} labelled images. Runs go to "
           f"{plain(get_settings().models_dir, 300)} "
           "and are tracked in MLflow (see the README for `mlflow ui`).")
run_dir, table = new_run_and_pick("boneage", ds, "No bone-age runs yet. Start one above: on the demo dataset a "
                                  "tiny_cnn at 96 px for 5 epochs takes about a minute on a CPU.")
show_run(run_dir, "boneage")

st.subheader("All bone-age runs")
st.dataframe(safe_table(table), hide_index=True, width="stretch")
