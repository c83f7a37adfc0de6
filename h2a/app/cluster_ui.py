"""App-layer helpers for the sex and clusters pages: cached embeddings and clusterings,
the cluster map figure and the image grid for selected points (sex-evidence CAMs come from
``h2a.app.cam_ui``).

Embeddings are cached on disk by ``h2a.analysis.embeddings`` (the first computation shows a
progress bar); here a process-wide memo keeps the loaded array, and ``st.cache_data``
keeps clusterings and k sweeps keyed by the embedding key and the parameters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from h2a.app.charts import SEX_COLORS, style
from h2a.app.state import progress_callback, thumb_for

SOURCE_PRETRAINED = "pretrained"
# Distinct hues for clusters (the theme's default palette has neighbouring blues), and
# none of them the sex colours, so a cluster is never mistaken for a sex.
CLUSTER_COLORS = ["#f5a623", "#7ed321", "#9b59b6", "#1abc9c", "#e74c3c", "#f8e71c", "#8b572a", "#50e3c2",
                  "#bd10e0", "#4a4a4a", "#b8e986", "#d0021b", "#417505", "#f78fb3", "#3dc1d3", "#596275",
                  "#e15f41", "#c44569", "#f19066", "#786fa6"]


# ---------------------------------------------------------------- embeddings

@st.cache_resource(show_spinner=False)
def _memo() -> dict:
    """Process-wide memo of loaded Embeddings keyed by (data, source, model mtime, preprocessing)."""
    return {}


def _source_token(source: str) -> tuple:
    if source == SOURCE_PRETRAINED:
        return (source,)
    from h2a.app.runs_ui import model_mtime
    from h2a.engine.runs import resolve_run

    run_dir = resolve_run(source)
    return (str(run_dir), model_mtime(run_dir))


def embeddings_for(ds, source: str, preprocess=None, arch: str = "efficientnet_lite0"):
    """Embeddings of the active dataset, with a progress bar the first time (then disk/memo)."""
    from h2a.analysis.embeddings import compute_embeddings

    key = (str(ds.root), ds.fingerprint, _source_token(source), arch,
           preprocess.cache_key() if preprocess is not None else None,
           preprocess.size if preprocess is not None else None)
    memo = _memo()
    if key in memo:
        emb = memo[key]
        emb.from_cache = True
        return emb
    slot = st.empty()
    holder: dict = {}

    def _progress(done: int, total: int, message: str = "") -> None:
        if "bar" not in holder:
            holder["bar"] = slot.progress(0.0, text="Embedding images (first time only)…")
        progress_callback(holder["bar"], "Embedding images (first time only)")(done, total, message)

    emb = compute_embeddings(ds, source, arch=arch, preprocess=preprocess, progress=_progress)
    slot.empty()
    memo[key] = emb
    return emb


@st.cache_data(show_spinner="Computing the UMAP map and k-means (cached on disk for next time)…", max_entries=16)
def clustering_for(_emb, emb_key: str, k: int, pca: int, n_neighbors: int, min_dist: float, metric: str,
                   seed: int) -> tuple[pd.DataFrame, dict]:
    """(per-image frame, scores) for one embedding and parameter set."""
    from h2a.analysis.clustering import cluster_embeddings

    _, frame, scores = cluster_embeddings(_emb, k=k, pca=pca, n_neighbors=n_neighbors, min_dist=min_dist,
                                          metric=metric, seed=seed)
    return frame, scores


@st.cache_data(show_spinner="Running k-means for each k…", max_entries=16)
def sweep_for(_emb, emb_key: str, pca: int, ks: tuple[int, ...], seed: int) -> pd.DataFrame:
    """Elbow and silhouette curves on the full (standardised, PCA) embedding."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from h2a.analysis.clustering import sweep_k

    Z = StandardScaler().fit_transform(_emb.X)
    n_comp = min(int(pca or 0), *Z.shape)
    if n_comp >= 2:
        Z = PCA(n_components=n_comp, random_state=seed).fit_transform(Z)
    return sweep_k(Z.astype(np.float32), ks, random_state=seed)


# ---------------------------------------------------------------- figures

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


def selected_ids(event) -> list[str]:
    """Image ids of the points selected in a ``st.plotly_chart(on_select=...)`` event."""
    try:
        points = event.selection.points
    except AttributeError:
        return []
    out = []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)) and cd:
            out.append(str(cd[0]))
        elif cd is not None:
            out.append(str(cd))
    return list(dict.fromkeys(out))


def image_grid(ids: list[str], paths: pd.Series, info: pd.DataFrame, columns: int = 8, limit: int = 48) -> None:
    """Thumbnails of the given ids with id, sex, bone age and cluster as captions."""
    shown = ids[:limit]
    if len(ids) > limit:
        st.caption(f"Showing {limit} of {len(ids)} selected images.")
    cols = st.columns(columns)
    for i, ident in enumerate(shown):
        with cols[i % columns]:
            path = paths.get(ident)
            thumb = thumb_for(path, side=160) if isinstance(path, str) else "image not found"
            row = info.loc[ident] if ident in info.index else None
            caption = ident if row is None else f"{ident} · {row['sex']} · {row['boneage']:.0f} mo · c{row['cluster']}"
            if isinstance(thumb, str):
                st.error(f"{ident}: {thumb}")
            else:
                st.image(thumb, caption=caption, width="stretch")


def composition_table(scores: dict) -> pd.DataFrame:
    rows = []
    for c in scores["clusters"]:
        rows.append({"cluster": c["cluster"], "images": c["size"],
                     "% male": None if c["share_male"] is None else round(100 * c["share_male"], 1),
                     "age mean (mo)": None if c["boneage_mean"] is None else round(c["boneage_mean"], 1),
                     "age sd": None if c["boneage_sd"] is None else round(c["boneage_sd"], 1),
                     "age range": "" if c["boneage_min"] is None
                     else f"{c['boneage_min']:.0f}-{c['boneage_max']:.0f}"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- sex page

@st.cache_data(show_spinner=False, max_entries=64)
def bootstrap_for(y: tuple, p: tuple, n: int = 1000, seed: int = 0) -> dict:
    from h2a.analysis.sex import bootstrap_auc

    return bootstrap_auc(np.asarray(y), np.asarray(p), n=n, seed=seed)


@st.cache_data(show_spinner=False, max_entries=32)
def bands_for(preds: pd.DataFrame) -> pd.DataFrame:
    from h2a.analysis.sex import by_age_band

    return by_age_band(preds)
