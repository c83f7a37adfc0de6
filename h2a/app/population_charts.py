"""The population page's figures: built from the active dataset's frame (one row per image:
id, split, sex, boneage, width, height, format, ...) and its intensity sample, no Streamlit."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from h2a.app.charts import SEX_COLORS, hover_ids, style

AGE_LABEL = {"boneage": "bone age (months)"}


def age_histogram(labelled: pd.DataFrame) -> go.Figure:
    fig = px.histogram(labelled, x="boneage", color="sex", barmode="overlay", nbins=40,
                       opacity=0.65, color_discrete_map=SEX_COLORS,
                       labels=AGE_LABEL, title="Bone-age distribution")
    return style(fig)


def age_violin(labelled: pd.DataFrame) -> go.Figure:
    fig = px.violin(labelled, x="sex", y="boneage", color="sex", box=True, points=False,
                    color_discrete_map=SEX_COLORS, labels=AGE_LABEL, title="Bone age by sex")
    fig.update_traces(spanmode="hard")  # no density drawn below 0 or above the oldest child
    return style(fig)


def split_age_histogram(labelled: pd.DataFrame) -> go.Figure:
    fig = px.histogram(labelled, x="boneage", color="split", barmode="overlay", histnorm="percent",
                       nbins=30, opacity=0.6, labels=AGE_LABEL,
                       title="Bone-age distribution per split (percent of split)")
    return style(fig)


def split_sex_balance(frame: pd.DataFrame) -> go.Figure:
    return style(px.histogram(frame, x="split", color="sex", barmode="group", color_discrete_map=SEX_COLORS,
                              title="Sex balance per split"))


def resolution_scatter(sized: pd.DataFrame) -> go.Figure:
    fig = px.scatter(hover_ids(sized, "id"), x="width", y="height", color="split", opacity=0.5,
                     hover_data=["id", "format", "bit_depth"], title="Image resolution (pixels)")
    return style(fig)


def side_histogram(sized: pd.DataFrame) -> go.Figure:
    melted = sized.melt(id_vars=["id"], value_vars=["width", "height"], var_name="side", value_name="pixels")
    return style(px.histogram(melted, x="pixels", color="side", barmode="overlay", opacity=0.6, nbins=40,
                              title="Width and height"))


def intensity_scatter(intens: pd.DataFrame) -> go.Figure:
    fig = px.scatter(hover_ids(intens, "id"), x="mean", y="range", color="sex", color_discrete_map=SEX_COLORS,
                     hover_data=["id", "boneage"], title="Mean intensity vs contrast (p95 - p5)")
    return style(fig)


def intensity_sd_histogram(intens: pd.DataFrame) -> go.Figure:
    return style(px.histogram(intens, x="std", color="sex", barmode="overlay", opacity=0.6,
                              color_discrete_map=SEX_COLORS, title="Per-image intensity SD"))
