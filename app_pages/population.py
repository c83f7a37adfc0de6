"""Population statistics: who is in the dataset, how the splits compare, what the images are."""

import plotly.express as px
import streamlit as st

from h2a.app.charts import SEX_COLORS, style
from h2a.app.state import progress_callback, require_dataset, thumb_for
from h2a.analysis.stats import age_bin_table, compute_stats, intensity_summary, split_table
from h2a.exports import csv_bytes, safe_frame

active = require_dataset()
ds = active.ds
frame = active.frame
summary = compute_stats(ds, active.headers)

st.title("Population statistics")
st.caption(f"{ds.root} · fingerprint {ds.fingerprint}")

c = st.columns(5)
c[0].metric("Images", f"{summary['n_images']:,}")
c[1].metric("Boys", f"{summary['n_male']:,}")
c[2].metric("Girls", f"{summary['n_female']:,}")
ba = summary["boneage_months"]
c[3].metric("Bone age, median", f"{ba['median']:.0f} mo" if ba["n"] else "n/a")
c[4].metric("Problems", len(summary["problems"]))

tab_age, tab_split, tab_img, tab_gallery, tab_problems = st.tabs(
    ["Bone age by sex", "Splits", "Images", "Gallery", f"Problems ({len(ds.problems)})"]
)

labelled = frame[frame["boneage"].notna()]

with tab_age:
    if labelled.empty:
        st.info("No bone-age labels in this dataset (a test list has sex only).")
    else:
        left, right = st.columns([3, 2])
        fig = px.histogram(labelled, x="boneage", color="sex", barmode="overlay", nbins=40,
                           opacity=0.65, color_discrete_map=SEX_COLORS,
                           labels={"boneage": "bone age (months)"}, title="Bone-age distribution")
        left.plotly_chart(style(fig), width="stretch")
        fig = px.violin(labelled, x="sex", y="boneage", color="sex", box=True, points=False,
                        color_discrete_map=SEX_COLORS, labels={"boneage": "bone age (months)"},
                        title="Bone age by sex")
        fig.update_traces(spanmode="hard")  # no density drawn below 0 or above the oldest child
        right.plotly_chart(style(fig), width="stretch")
        st.markdown("**Images per 12-month bone-age bin and sex**")
        st.dataframe(age_bin_table(ds.meta), hide_index=True, width="stretch")
        by_sex = summary["by_sex"]
        st.caption(" · ".join(
            f"{s}: n={v['n']}, mean {v['mean']:.1f}, median {v['median']:.0f}, range {v['min']:.0f}-{v['max']:.0f} months"
            for s, v in by_sex.items() if v["n"]))

with tab_split:
    st.dataframe(split_table(ds.meta), hide_index=True, width="stretch")
    if labelled["split"].nunique() > 1:
        fig = px.histogram(labelled, x="boneage", color="split", barmode="overlay", histnorm="percent",
                           nbins=30, opacity=0.6, labels={"boneage": "bone age (months)"},
                           title="Bone-age distribution per split (percent of split)")
        st.plotly_chart(style(fig), width="stretch")
        fig = px.histogram(frame, x="split", color="sex", barmode="group", color_discrete_map=SEX_COLORS,
                           title="Sex balance per split")
        st.plotly_chart(style(fig), width="stretch")
    else:
        st.caption("One labelled split: add a validation CSV to the folder to compare splits side by side.")

with tab_img:
    sized = frame[frame["width"].notna()]
    if sized.empty:
        st.info("No readable images in this dataset (labels only).")
    else:
        left, right = st.columns(2)
        fig = px.scatter(sized, x="width", y="height", color="split", opacity=0.5,
                         hover_data=["id", "format", "bit_depth"], title="Image resolution (pixels)")
        left.plotly_chart(style(fig), width="stretch")
        melted = sized.melt(id_vars=["id"], value_vars=["width", "height"], var_name="side", value_name="pixels")
        fig = px.histogram(melted, x="pixels", color="side", barmode="overlay", opacity=0.6, nbins=40,
                           title="Width and height")
        right.plotly_chart(style(fig), width="stretch")
        facts = sized.groupby(["format", "mode", "bit_depth"], dropna=False).size().rename("images").reset_index()
        st.dataframe(facts, hide_index=True)
        st.markdown("**Intensity and contrast** (a random sample, decoded)")
        n_sample = st.slider("Sample size", 50, 1000, 200, step=50, key="intensity_n")
        intens = st.session_state.get(f"intensity-{ds.fingerprint}-{n_sample}")
        if intens is None:
            bar = st.progress(0.0, text="Measuring intensities…")
            intens = intensity_summary(ds, n=n_sample, progress=progress_callback(bar, "Measuring intensities"))
            bar.empty()
            st.session_state[f"intensity-{ds.fingerprint}-{n_sample}"] = intens
        if intens.empty:
            st.info("No image could be decoded for the intensity summary.")
        else:
            left, right = st.columns(2)
            fig = px.scatter(intens, x="mean", y="range", color="sex", color_discrete_map=SEX_COLORS,
                             hover_data=["id", "boneage"], title="Mean intensity vs contrast (p95 - p5)")
            left.plotly_chart(style(fig), width="stretch")
            fig = px.histogram(intens, x="std", color="sex", barmode="overlay", opacity=0.6,
                               color_discrete_map=SEX_COLORS, title="Per-image intensity SD")
            right.plotly_chart(style(fig), width="stretch")

with tab_gallery:
    with_img = frame[frame["path"].notna() & frame["error"].isna()]
    if with_img.empty:
        st.info("No readable images to show.")
    else:
        f1, f2, f3 = st.columns([1, 2, 1])
        sex = f1.selectbox("Sex", ["all", "female", "male"], key="gallery_sex")
        lo_age, hi_age = 0, int(max(240, (with_img["boneage"].max() if with_img["boneage"].notna().any() else 240)))
        age = f2.slider("Bone age (months)", lo_age, hi_age, (lo_age, hi_age), key="gallery_age")
        n_show = f3.selectbox("Images", [12, 24, 48], key="gallery_n")
        sel = with_img
        if sex != "all":
            sel = sel[sel["sex"] == sex]
        if sel["boneage"].notna().any():
            sel = sel[sel["boneage"].between(*age) | sel["boneage"].isna()]
        st.caption(f"{len(sel):,} images match")
        if len(sel):
            seed = st.session_state.get("gallery_seed", 0)
            if st.button("Shuffle", key="gallery_shuffle"):
                st.session_state["gallery_seed"] = seed = seed + 1
            shown = sel.sample(n=min(n_show, len(sel)), random_state=seed).sort_values("boneage")
            cols = st.columns(6)
            for i, row in enumerate(shown.itertuples()):
                with cols[i % 6]:
                    thumb = thumb_for(row.path)
                    age_txt = f"{row.boneage:.0f} mo" if row.boneage == row.boneage else "no age"
                    if isinstance(thumb, str):
                        st.error(thumb)
                    else:
                        st.image(thumb, caption=f"{row.id} · {row.sex} · {age_txt}", width="stretch")
            chosen = st.multiselect("Send to the preprocessing preview", shown["id"].tolist(), key="gallery_pick",
                                    max_selections=4)
            if chosen and st.button("Open in preprocessing preview", key="gallery_to_preview"):
                st.session_state["preview_ids"] = chosen
                st.switch_page("app_pages/preprocessing.py")

with tab_problems:
    if not ds.problems:
        st.success("No problems found: every row has valid labels and a readable image.")
    else:
        probs = ds.problem_frame()
        kinds = probs["problem"].str.replace(r"[0-9]+", "N", regex=True).str.split(":").str[0]
        st.warning(f"{len(probs)} problems. The good rows are loaded; these rows or files were skipped or have no image.")
        st.dataframe(kinds.value_counts().rename_axis("kind").rename("count").reset_index(), hide_index=True)
        st.dataframe(safe_frame(probs), hide_index=True, width="stretch")  # its toolbar exports too
        st.download_button("Download the problem list (CSV)", csv_bytes(probs),
                           file_name=f"{ds.name}-problems.csv", mime="text/csv")
