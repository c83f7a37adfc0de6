"""Shared Plotly styling for the pages (one look across the app)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from h2a.app.plain import chart_text

SEX_COLORS = {"female": "#e4789c", "male": "#4fa3d9", "unknown": "#9a9a9a"}


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
