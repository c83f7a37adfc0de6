"""The sex-from-the-image page's figures: built from an evaluation's metrics and predictions
(``male``, ``p_male`` and, when calibrated, ``p_male_raw`` per image), no Streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from h2a.analysis.sex import expected_calibration_error, reliability_frame, roc_points
from h2a.app.charts import SEX_COLORS, diagonal, style

PROBABILITY_COLORS = {"calibrated": "#4fa3d9", "raw": "#e07b39"}


def roc_chart(y: np.ndarray, p: np.ndarray, auc_text: str) -> go.Figure:
    """The ROC curve (male = positive); with one class only, the chance line alone."""
    roc = (roc_points(y, p) if len(np.unique(y)) > 1
           else pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1], "threshold": [1, 0]}))
    fig = px.area(roc, x="fpr", y="tpr", hover_data=["threshold"], title=f"ROC curve (AUC {auc_text})",
                  labels={"fpr": "false positive rate (girls called boys)", "tpr": "true positive rate (boys found)"})
    diagonal(fig, 0, 1, "chance")
    fig.update_yaxes(range=[0, 1.02])
    return style(fig)


def confusion_chart(confusion) -> go.Figure:
    fig = px.imshow(np.asarray(confusion), text_auto=True, x=["predicted girl", "predicted boy"], y=["girl", "boy"],
                    color_continuous_scale="Blues", title="Confusion matrix (threshold 0.5)")
    fig.update_layout(coloraxis_showscale=False)
    return style(fig)


def bands_chart(bands: pd.DataFrame) -> go.Figure:
    """AUC (with bootstrap bars) and accuracy per 2-year bone-age band."""
    fig = go.Figure()
    fig.add_bar(x=bands["band"], y=bands["auc"], name="AUC", customdata=bands[["n"]],
                error_y=dict(type="data", symmetric=False, array=(bands["auc_high"] - bands["auc"]).fillna(0),
                             arrayminus=(bands["auc"] - bands["auc_low"]).fillna(0)),
                hovertemplate="%{x}: AUC %{y:.2f} (n %{customdata[0]})<extra></extra>")
    fig.add_scatter(x=bands["band"], y=bands["accuracy"], name="accuracy", mode="lines+markers")
    fig.add_hline(y=0.5, line_dash="dash", line_color="#aaa")
    fig.update_layout(title="AUC (95% bootstrap bars) and accuracy by bone age", yaxis_range=[0, 1.05],
                      xaxis_title="2-year bone-age band", yaxis_title="")
    return style(fig)


def calibration_chart(preds: pd.DataFrame, metrics: dict) -> go.Figure:
    """Reliability diagram of the calibrated (and, when recorded, the raw) P(male), titled with the ECE."""
    cal = reliability_frame(preds)
    ece = metrics.get("ece", expected_calibration_error(preds["male"].astype(int).to_numpy(),
                                                        preds["p_male"].to_numpy(dtype=float)))
    ece_raw = metrics.get("ece_uncalibrated")
    title = (f"Calibration: ECE {ece_raw:.3f} raw -> {ece:.3f} calibrated"
             if ece_raw is not None and "p_male_raw" in preds
             else f"Calibration: expected calibration error {ece:.3f}")
    fig = px.scatter(cal, x="mean_predicted", y="share_male", size="n", color="probabilities", hover_data=["bin", "n"],
                     color_discrete_map=PROBABILITY_COLORS, title=title,
                     labels={"mean_predicted": "mean predicted P(male)", "share_male": "observed share male"})
    for name, colour in PROBABILITY_COLORS.items():
        part = cal[cal["probabilities"] == name]
        if not part.empty:
            fig.add_trace(go.Scatter(x=part["mean_predicted"], y=part["share_male"], mode="lines", showlegend=False,
                                     line=dict(color=colour)))
    diagonal(fig, 0, 1, "perfectly calibrated")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1])
    return style(fig)


def p_male_histogram(preds: pd.DataFrame) -> go.Figure:
    """Predicted P(male), one overlaid histogram per true sex."""
    fig = px.histogram(preds.assign(sex=np.where(preds["male"], "male", "female")), x="p_male", color="sex", nbins=40,
                       barmode="overlay", opacity=0.6, color_discrete_map=SEX_COLORS,
                       title="Predicted P(male) by true sex", labels={"p_male": "predicted P(male)"})
    return style(fig, height=300)
