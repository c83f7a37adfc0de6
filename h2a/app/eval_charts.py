"""The bone-age evaluation page's figures and tables: built from an evaluation's metrics and
predictions (``h2a.inference.evaluate``), no Streamlit, so the page reads as its layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from h2a.app.charts import REFERENCE_LINE, SEX_COLORS, diagonal, hover_ids, style


def _conformal(m: dict) -> bool:
    return "conformal" in str((m.get("interval_method") or {}).get("method"))


def comparison_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """One row per run: the headline figures side by side (``metrics``: run name -> metrics)."""
    rows = []
    for name, m in metrics.items():
        rows.append({"run": name, "n": m["n"], "MAE (mo)": round(m["mae"], 2), "RMSE": round(m["rmse"], 2),
                     "R²": round(m["r2"], 3) if m["r2"] is not None else None,
                     "within 12 mo": f"{100 * m['within_12_months']:.1f}%",
                     "MAE girls": round(m["mae_by_sex"].get("female", np.nan), 2),
                     "MAE boys": round(m["mae_by_sex"].get("male", np.nan), 2),
                     "predict-the-mean MAE": round(m["mae_baseline_mean"], 2),
                     "interval coverage": (f"{100 * m['interval_coverage']:.1f}%"
                                           if m.get("interval_coverage") is not None else None),
                     "mean interval width (mo)": (round(m["interval_width_months"], 1)
                                                  if m.get("interval_width_months") is not None else None),
                     "interval": "conformal" if _conformal(m) else "old rule"})
    return pd.DataFrame(rows)


def val_mae_curves(histories: dict[str, list[dict]]) -> go.Figure:
    """Validation MAE per epoch of each run (``histories``: run name -> its metadata's history)."""
    fig = go.Figure()
    for name, history in histories.items():
        hist = pd.DataFrame(history)
        if not hist.empty and "val_mae" in hist:
            fig.add_scatter(x=hist["epoch"], y=hist["val_mae"], name=name, mode="lines+markers")
    fig.update_layout(title="Validation MAE per epoch", xaxis_title="epoch", yaxis_title="MAE (months)")
    return style(fig)


def mae_by_band_runs(metrics: dict[str, dict]) -> go.Figure:
    """MAE per 2-year bone-age band, one bar per run."""
    bins = pd.DataFrame({name: m["mae_by_age_bin"] for name, m in metrics.items()})
    fig = px.bar(bins.reset_index(names="age band"), x="age band", y=list(metrics), barmode="group",
                 title="MAE by 2-year bone-age band", labels={"value": "MAE (months)", "variable": "run"})
    return style(fig)


def predicted_vs_true(preds: pd.DataFrame) -> go.Figure:
    """Predicted against true bone age, coloured by sex, with the identity line."""
    lim = [0, float(max(preds["boneage"].max(), preds["predicted"].max()) + 6)]
    fig = px.scatter(hover_ids(preds, "id"), x="boneage", y="predicted", color="sex", color_discrete_map=SEX_COLORS,
                     opacity=0.6, hover_data=["id", "error"],
                     labels={"boneage": "true bone age (months)", "predicted": "predicted (months)"},
                     title="Predicted vs true")
    return style(diagonal(fig, lim[0], lim[1], "identity"))


def bland_altman(preds: pd.DataFrame, ba: dict) -> go.Figure:
    """Error against the mean of true and predicted; ``ba`` is the core's bias and limits of
    agreement (as ``h2a evaluate --json`` reports them)."""
    mean = (preds["boneage"] + preds["predicted"]) / 2
    limits = "" if ba["sd"] is None else f", limits {ba['loa_low']:+.1f} to {ba['loa_high']:+.1f}"
    fig = px.scatter(hover_ids(preds, "id").assign(mean=mean), x="mean", y="error", color="sex",
                     color_discrete_map=SEX_COLORS, opacity=0.6, hover_data=["id"],
                     labels={"mean": "mean of true and predicted (months)", "error": "predicted - true (months)"},
                     title=f"Bland-Altman: bias {ba['bias']:+.1f}{limits}")
    for y, dash in ((ba["bias"], "solid"), (ba["loa_low"], "dash"), (ba["loa_high"], "dash")):
        if y is not None:
            fig.add_hline(y=y, line_dash=dash, line_color="#aaa")
    return style(fig)


def mae_by_sex(metrics: dict) -> go.Figure:
    by_sex = pd.DataFrame({"sex": list(metrics["mae_by_sex"]), "MAE": list(metrics["mae_by_sex"].values())})
    return style(px.bar(by_sex, x="sex", y="MAE", color="sex", color_discrete_map=SEX_COLORS,
                        title="MAE by sex (months)"))


def interval_level(metrics: dict) -> float:
    """The nominal coverage the run's intervals were calibrated for (0.95 when not recorded)."""
    return float((metrics.get("interval_method") or {}).get("level") or 0.95)


def band_frame(metrics: dict) -> pd.DataFrame:
    """Per 2-year band: MAE, images, interval coverage and mean interval width."""
    bands = list(metrics["mae_by_age_bin"])
    coverage = metrics.get("coverage_by_age_bin") or {}
    width = metrics.get("width_by_age_bin") or {}
    return pd.DataFrame({"band": bands, "MAE": list(metrics["mae_by_age_bin"].values()),
                         "n": [metrics["n_by_age_bin"][b] for b in bands],
                         "coverage": [coverage.get(b) for b in bands],
                         "width": [width.get(b) for b in bands]})


def band_table(metrics: dict) -> pd.DataFrame:
    """``band_frame`` rounded for reading, coverage as a percentage."""
    by_bin = band_frame(metrics)
    table = by_bin.assign(coverage=[None if v is None else f"{100 * v:.0f}%" for v in by_bin["coverage"]],
                          MAE=by_bin["MAE"].round(1), width=by_bin["width"].astype(float).round(1))
    return table.rename(columns={"MAE": "MAE (mo)", "width": "mean width (mo)"})


def band_coverage(metrics: dict) -> go.Figure:
    """MAE bars per band, with the intervals' coverage (and the nominal level) on a second axis."""
    by_bin, level = band_frame(metrics), interval_level(metrics)
    fig = go.Figure()
    fig.add_bar(x=by_bin["band"], y=by_bin["MAE"], name="MAE (months)", customdata=by_bin[["n"]],
                hovertemplate="%{x}: MAE %{y:.1f} mo (n %{customdata[0]})<extra></extra>")
    if metrics.get("coverage_by_age_bin"):
        fig.add_scatter(x=by_bin["band"], y=100 * by_bin["coverage"].astype(float), name="interval coverage (%)",
                        mode="lines+markers", yaxis="y2", customdata=by_bin[["n", "width"]],
                        hovertemplate="%{x}: coverage %{y:.0f}% of %{customdata[0]} images, mean width "
                                      "%{customdata[1]:.1f} mo<extra></extra>")
        fig.add_scatter(x=by_bin["band"], y=[100 * level] * len(by_bin), name=f"nominal {100 * level:g}%",
                        mode="lines", yaxis="y2", line=REFERENCE_LINE, hoverinfo="skip")
    fig.update_layout(title="MAE and interval coverage by 2-year bone-age band", xaxis_title="band (true bone age)",
                      yaxis_title="MAE (months)",
                      yaxis2=dict(title="coverage (%)", overlaying="y", side="right", range=[50, 101], showgrid=False))
    return style(fig).update_layout(legend=dict(orientation="h", y=-0.3, x=0, xanchor="left"))
