"""Population statistics: who is in the dataset, how the splits compare, what the images are.

The tabs are lazy (``on_change="rerun"``): only the open tab runs, so a first visit pays
for the bone-age charts alone. What needs pixels (the intensity summary, the gallery)
reads thumbnails from the workspace's thumbnail cache, and the intensity summary is
shared by every session of the server (``st.cache_data`` keyed by the dataset's
fingerprint): a dataset's sample images are decoded once, not once per session.
"""

import pandas as pd
import streamlit as st

from h2a.app import population_charts as pc
from h2a.app.plain import plain, safe_table
from h2a.app.state import intensity_for, require_dataset, show_thumb
from h2a.analysis.stats import age_bin_table, format_table, problem_kinds, select_images, split_table
from h2a.exports import csv_bytes

TABS = ["Bone age by sex", "Splits", "Images", "Gallery", "Problems"]


def age_tab(ds, labelled: pd.DataFrame, summary: dict) -> None:
    if labelled.empty:
        st.info("No bone-age labels in this dataset (a test list has sex only).")
        return
    left, right = st.columns([3, 2])
    left.plotly_chart(pc.age_histogram(labelled), width="stretch")
    right.plotly_chart(pc.age_violin(labelled), width="stretch")
    st.markdown("**Images per 12-month bone-age bin and sex**")
    st.dataframe(safe_table(age_bin_table(ds.meta)), hide_index=True, width="stretch")
    st.caption(" · ".join(
        f"{s}: n={v['n']}, mean {v['mean']:.1f}, median {v['median']:.0f}, range {v['min']:.0f}-{v['max']:.0f} months"
        for s, v in summary["by_sex"].items() if v["n"]))


def split_tab(ds, frame: pd.DataFrame, labelled: pd.DataFrame) -> None:
    st.dataframe(safe_table(split_table(ds.meta)), hide_index=True, width="stretch")
    if labelled["split"].nunique() <= 1:
        st.caption("One labelled split: add a validation CSV to the folder to compare splits side by side.")
        return
    st.plotly_chart(pc.split_age_histogram(labelled), width="stretch")
    st.plotly_chart(pc.split_sex_balance(frame), width="stretch")


def images_tab(ds, frame: pd.DataFrame) -> None:
    sized = frame[frame["width"].notna()]
    if sized.empty:
        st.info("No readable images in this dataset (labels only).")
        return
    left, right = st.columns(2)
    left.plotly_chart(pc.resolution_scatter(sized), width="stretch")
    right.plotly_chart(pc.side_histogram(sized), width="stretch")
    st.dataframe(safe_table(format_table(sized)), hide_index=True)
    st.markdown("**Intensity and contrast** (a random sample, read as 128 px thumbnails)")
    n_sample = st.slider("Sample size", 50, 1000, 200, step=50, key="intensity_n")
    intens = intensity_for(ds, n_sample)
    if intens.empty:
        st.info("No image could be decoded for the intensity summary.")
        return
    left, right = st.columns(2)
    left.plotly_chart(pc.intensity_scatter(intens), width="stretch")
    right.plotly_chart(pc.intensity_sd_histogram(intens), width="stretch")


def gallery_tab(frame: pd.DataFrame) -> None:
    with_img = frame[frame["path"].notna() & frame["error"].isna()]
    if with_img.empty:
        st.info("No readable images to show.")
        return
    f1, f2, f3 = st.columns([1, 2, 1])
    sex = f1.selectbox("Sex", ["all", "female", "male"], key="gallery_sex")
    lo_age, hi_age = 0, int(max(240, (with_img["boneage"].max() if with_img["boneage"].notna().any() else 240)))
    age = f2.slider("Bone age (months)", lo_age, hi_age, (lo_age, hi_age), key="gallery_age")
    n_show = f3.selectbox("Images", [12, 24, 48], key="gallery_n")
    sel = select_images(with_img, sex, age)
    st.caption(f"{len(sel):,} images match")
    if not len(sel):
        return
    seed = st.session_state.get("gallery_seed", 0)
    if st.button("Shuffle", key="gallery_shuffle"):
        st.session_state["gallery_seed"] = seed = seed + 1
    shown = sel.sample(n=min(n_show, len(sel)), random_state=seed).sort_values("boneage")
    cols = st.columns(6)
    for i, row in enumerate(shown.itertuples()):
        with cols[i % 6]:  # thumbnails from the on-disk cache: one decode per image, ever
            age_txt = f"{row.boneage:.0f} mo" if row.boneage == row.boneage else "no age"
            show_thumb(row.path, f"{row.id} · {row.sex} · {age_txt}")
    chosen = st.multiselect("Send to the preprocessing preview", shown["id"].tolist(), key="gallery_pick",
                            max_selections=4)
    if chosen and st.button("Open in preprocessing preview", key="gallery_to_preview"):
        st.session_state["preview_ids"] = chosen
        st.switch_page("app_pages/preprocessing.py")


def problems_tab(ds) -> None:
    if not ds.problems:
        st.success("No problems found: every row has valid labels and a readable image.")
        return
    probs = ds.problem_frame()
    st.warning(f"{len(probs)} problems. The good rows are loaded; these rows or files were skipped or have no image.")
    st.dataframe(safe_table(problem_kinds(probs)), hide_index=True)
    st.dataframe(safe_table(probs), hide_index=True, width="stretch")  # its toolbar exports too
    st.download_button("Download the problem list (CSV)", csv_bytes(probs),
                       file_name=f"{ds.name}-problems.csv", mime="text/csv")


active = require_dataset()
ds = active.ds
frame = active.frame
summary = active.summary

st.title("Population statistics")
st.caption(f"{plain(ds.root, 300)} · fingerprint {ds.fingerprint}")

c = st.columns(5)
c[0].metric("Images", f"{summary['n_images']:,}")
c[1].metric("Boys", f"{summary['n_male']:,}")
c[2].metric("Girls", f"{summary['n_female']:,}")
ba = summary["boneage_months"]
c[3].metric("Bone age, median", f"{ba['median']:.0f} mo" if ba["n"] else "n/a")
c[4].metric("Problems", len(summary["problems"]))

# Lazy tabs: only the selected tab's ``open`` is True, so the others compute nothing.
tabs = st.tabs(TABS[:-1] + [f"{TABS[-1]} ({len(ds.problems)})"], key="pop_tab", on_change="rerun")
labelled = frame[frame["boneage"].notna()]
renderers = [lambda: age_tab(ds, labelled, summary), lambda: split_tab(ds, frame, labelled),
             lambda: images_tab(ds, frame), lambda: gallery_tab(frame), lambda: problems_tab(ds)]
for tab, render in zip(tabs, renderers):
    if tab.open:
        with tab:
            render()
