"""The Clusters page's figures: the UMAP map, bone age and share male by cluster (for the
map's and the full embedding's k-means side by side), and the "choosing k" curves.

Each takes the clusters job's answer (``h2a.analysis.cluster_jobs.load_clusters``: the
per-image frame or the k sweep) and returns a styled Plotly figure; the page only places
them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from h2a.app.charts import SEX_COLORS, style

__all__ = ["CLUSTER_COLORS", "age_by_cluster", "cluster_map", "k_sweep_chart", "share_male_by_cluster"]

# Distinct hues for clusters (the theme's default palette has neighbouring blues), and
# none of them the sex colours, so a cluster is never mistaken for a sex.
CLUSTER_COLORS = ["#f5a623", "#7ed321", "#9b59b6", "#1abc9c", "#e74c3c", "#f8e71c", "#8b572a", "#50e3c2",
                  "#bd10e0", "#4a4a4a", "#b8e986", "#d0021b", "#417505", "#f78fb3", "#3dc1d3", "#596275",
                  "#e15f41", "#c44569", "#f19066", "#786fa6"]
SPACES = {"cluster": "map", "cluster_full": "full embedding"}  # frame column -> where k-means ran
_ORDER = {"space": list(SPACES.values())}


def cluster_map(frame: pd.DataFrame, color: str, title: str) -> go.Figure:
    """UMAP scatter coloured by 'cluster', 'cluster_full', 'sex' or 'boneage'; customdata = id."""
    df = frame.copy()
    df["cluster"] = df["cluster"].astype(str)
    df["cluster_full"] = df["cluster_full"].astype(str)
    df["bone age (months)"] = df["boneage"].round(0)
    kwargs: dict = {}
    if color == "sex":
        kwargs = dict(color="sex", color_discrete_map=SEX_COLORS)
    elif color == "boneage":
        kwargs = dict(color="boneage", color_continuous_scale="Viridis", labels={"boneage": "bone age (mo)"})
    else:
        kwargs = dict(color=color, category_orders={color: sorted(df[color].unique(), key=int)},
                      color_discrete_sequence=CLUSTER_COLORS,
                      labels={"cluster": "cluster (map)", "cluster_full": "cluster (full)"})
    fig = px.scatter(df, x="umap_x", y="umap_y", custom_data=["id"], hover_name="id",
                     hover_data={"umap_x": False, "umap_y": False, "sex": True, "bone age (months)": True,
                                 "cluster": True, "cluster_full": True, "boneage": False}, title=title,
                     opacity=0.75, **kwargs)
    fig.update_traces(marker=dict(size=6 if len(df) < 2000 else 4))
    # no dragmode: Streamlit then pans on drag and selects the clicked point; box and lasso
    # come from the toolbar
    fig.update_layout(xaxis_title="UMAP 1", yaxis_title="UMAP 2")
    return style(fig, height=560)


def by_space(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per image and space: bone age, sex, 'space' (map / full embedding) and its
    'k-means cluster' (as text, so Plotly treats it as a category)."""
    long = frame.melt(id_vars=["boneage", "sex"], value_vars=list(SPACES), var_name="space",
                      value_name="k-means cluster")
    long["space"] = long["space"].map(SPACES)
    long["k-means cluster"] = long["k-means cluster"].astype(str)
    return long


def age_by_cluster(frame: pd.DataFrame) -> go.Figure:
    """Box plots of bone age per cluster, the map's and the full embedding's side by side."""
    fig = px.box(by_space(frame), x="k-means cluster", y="boneage", color="space", title="Bone age by cluster",
                 labels={"boneage": "bone age (months)"}, category_orders=_ORDER)
    return style(fig)


def share_male_by_cluster(frame: pd.DataFrame) -> go.Figure:
    """% male per cluster (images of unknown sex left out), with the whole dataset's share."""
    long = by_space(frame)
    share = (long[long["sex"] != "unknown"].groupby(["space", "k-means cluster"])["sex"]
             .apply(lambda s: 100 * (s == "male").mean()).reset_index(name="% male"))
    fig = px.bar(share, x="k-means cluster", y="% male", color="space", barmode="group",
                 title="Share male by cluster", category_orders=_ORDER)
    if np.isfinite(frame["male"]).any():
        fig.add_hline(y=100 * float(np.nanmean(frame["male"])), line_dash="dash", line_color="#888",
                      annotation_text="whole dataset")
    return style(fig)


def k_sweep_chart(sweep: pd.DataFrame) -> go.Figure:
    """Inertia (look for the elbow) and silhouette against k, from the job's k sweep."""
    fig = make_subplots(rows=1, cols=2,
                        subplot_titles=("inertia (look for the elbow)", "silhouette (higher is better)"))
    fig.add_scatter(x=sweep["k"], y=sweep["inertia"], mode="lines+markers", name="inertia", row=1, col=1)
    fig.add_scatter(x=sweep["k"], y=sweep["silhouette"], mode="lines+markers", name="silhouette", row=1, col=2)
    fig.update_xaxes(title_text="k")
    ks = f"k = {sweep['k'].min()} to {sweep['k'].max()}" if len(sweep) else "no k"
    fig.update_layout(title=f"k-means on the full embedding for {ks}", showlegend=False)
    return style(fig, height=320)
