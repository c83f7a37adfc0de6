"""Shared Plotly styling for the pages (one look across the app)."""

from __future__ import annotations

import plotly.graph_objects as go

SEX_COLORS = {"female": "#e4789c", "male": "#4fa3d9", "unknown": "#9a9a9a"}


def style(fig: go.Figure, height: int = 380) -> go.Figure:
    """Compact margins and a legend that does not cover the data."""
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="v", yanchor="top", y=1, xanchor="left", x=1.01,
                                  bgcolor="rgba(0,0,0,0)"))
    return fig
