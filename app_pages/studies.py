"""Studies: reproduce the seed papers' experiments and search settings, in the background."""

import streamlit as st

from h2a.app.plain import plain, safe_table
from h2a.app.state import sidebar_dataset
from h2a.app.study_ui import show_study, start_form, studies_table
from h2a.app.training_ui import device_banner
from h2a.studies import default_storage

active = sidebar_dataset()  # the default data folder; the list of studies needs no dataset

st.title("Studies")
st.caption("A study is many ordinary training runs in one Optuna study: arms (with / without the sex input, "
           "ImageNet / random init, ...) compared on the same held-out images with a 95% CI, a search over "
           f"settings, or the clusters question. Stored in {plain(default_storage(), 300)}; `h2a study report NAME` "
           "writes the findings up.")
device_banner()

table = studies_table()
with st.expander("New study", expanded=table.empty):
    started = start_form(active.path if active.ds is not None else None)
    if started is not None:
        st.session_state["study_pick"] = started
        table = studies_table()

if table.empty:
    st.info("No studies yet. Start one above: the `sex-input` preset at 2 minutes per trial is the quickest "
            "question with an answer.")
    st.stop()

st.subheader("All studies")
st.dataframe(safe_table(table), hide_index=True, width="stretch")
names = table["study"].tolist()
if st.session_state.get("study_pick") not in names:
    st.session_state["study_pick"] = names[0]
pick = st.selectbox("Study", names, key="study_pick")
show_study(pick)
