"""Shared Plotly styling for the pages (one look across the app), and the small figures more
than one page draws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from h2a.app.plain import chart_text

SEX_COLORS = {"female": "#e4789c", "male": "#4fa3d9", "unknown": "#9a9a9a"}
REFERENCE_LINE = dict(color="#aaa", dash="dash")  # identity, chance, nominal level: grey and dashed


def style(fig: go.Figure, height: int = 380) -> go.Figure:
    """Compact margins and a legend that does not cover the data; trace names and hover
    names (split, run, site names, image ids: a file's text) shown as text, not HTML."""
    for trace in fig.data:
        if isinstance(getattr(trace, "name", None), str):
            trace.name = chart_text(trace.name)
        hover = getattr(trace, "hovertext", None)
        if isinstance(hover, str):
            trace.hovertext = chart_text(hover)
        elif hover is not None and len(hover):
            trace.hovertext = [chart_text(h) if isinstance(h, str) else h for h in hover]
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="v", yanchor="top", y=1, xanchor="left", x=1.01,
                                  bgcolor="rgba(0,0,0,0)"))
    return fig


def hover_ids(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """A copy of ``frame`` whose text ``columns`` (ids from a label CSV, shown in hover boxes
    through ``hover_data``) read as text in Plotly, not as its HTML."""
    return frame.assign(**{c: frame[c].map(lambda v: chart_text(v) if isinstance(v, str) else v) for c in columns})


def diagonal(fig: go.Figure, lo: float, hi: float, name: str) -> go.Figure:
    """The dashed grey y = x line from ``lo`` to ``hi`` (identity, chance, perfect calibration)."""
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name=name, line=REFERENCE_LINE))
    return fig


def intensity_histogram(values: np.ndarray, title: str, rng: tuple[float, float],
                        counts: np.ndarray | None = None) -> go.Figure:
    """A 64-bin histogram of pixel intensities over ``rng`` (or of ``counts`` already binned)."""
    if counts is None:
        counts, edges = np.histogram(values.ravel(), bins=64, range=rng)
    else:
        edges = np.linspace(rng[0], rng[1], len(counts) + 1)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, marker_color="#4fa3d9"))
    fig.update_layout(title=title, bargap=0, xaxis_title="intensity", yaxis_title="pixels")
    return style(fig, height=220)
