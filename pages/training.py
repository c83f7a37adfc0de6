"""Bone-age training: start runs in the background, watch them live, see every run."""

import streamlit as st

from h2a.app.state import require_dataset
from h2a.app.training_ui import device_banner, runs_table, show_run, train_form
from h2a.config import get_settings

active = require_dataset()
ds = active.ds

st.title("Bone-age training")
device_banner()
n_lab = len(ds.labelled())
st.caption(f"Dataset **{ds.name}**: {n_lab:,} labelled images. Runs go to {get_settings().models_dir} and "
           "are tracked in MLflow (see the README for `mlflow ui`).")

with st.expander("New run", expanded=not runs_table("boneage").shape[0]):
    started = train_form("boneage", ds.root, ds.synthetic)
    if started is not None:
        st.session_state["boneage_run"] = str(started)

table = runs_table("boneage")
if table.empty:
    st.info("No bone-age runs yet. Start one above: on the demo dataset a tiny_cnn at 96 px for 5 epochs "
            "takes about a minute on a CPU.")
    st.stop()

names = table["run"].tolist()
current = st.session_state.get("boneage_run")
current_name = current.rsplit("/", 1)[-1] if current else names[0]
pick = st.selectbox("Run", names, index=names.index(current_name) if current_name in names else 0, key="boneage_pick")
show_run(get_settings().models_dir / pick, "boneage")

st.subheader("All bone-age runs")
st.dataframe(table, hide_index=True, width="stretch")
