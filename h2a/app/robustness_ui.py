"""The Evaluation page's robustness section: the run's MAE, bias and flagged share when the
same radiographs are made differently (``h2a.analysis.robustness``, the same report as
``h2a robustness``).

Each image is predicted 14 times, so the report is computed only when the user presses
the button (with a progress bar), then kept for the process (keyed by the run's model.pt
mtime, the data, split and image count) so reruns and other sessions show it at once.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from h2a.app.charts import style
from h2a.app.plain import plain, safe_table
from h2a.app.runs_ui import model_mtime
from h2a.app.state import progress_callback
from h2a.exports import csv_bytes
from h2a.analysis.robustness import robustness_report

DEFAULT_LIMIT = 200  # about 3 minutes for a 128 px EfficientNet-Lite0 run on 2 CPU cores
MAX_LIMIT = 5000
KIND_COLORS = {"baseline": "#9a9a9a", "benign": "#4fa3d9", "degraded": "#f5a623", "orientation": "#e74c3c"}
KIND_WORDS = {"baseline": "unperturbed", "benign": "benign (should not matter)",
              "degraded": "degraded image", "orientation": "wrong way round"}


@st.cache_resource(show_spinner=False)
def _memo() -> dict:
    """Process-wide memo of finished reports (tables, not models: small)."""
    return {}


def _key(run_dir: str | Path, data_dir: str | Path | None, split: str | None, limit: int, ood: bool) -> tuple:
    return (str(Path(run_dir).resolve()), model_mtime(run_dir), str(data_dir) if data_dir else None,
            split, int(limit), bool(ood))


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The report's table in the page's words and units."""
    return pd.DataFrame({
        "perturbation": table["perturbation"],
        "what": table["description"],
        "kind": table["kind"].map(KIND_WORDS).fillna(table["kind"]),
        "n": table["n"],
        "MAE (mo)": table["mae"].round(2),
        "MAE change": table["mae_change"].round(2),
        "bias (mo)": table["bias"].round(2),
        "answer moved (mo)": table["shift"].round(2),
        "flagged": (100 * table["flagged"]).round(1).astype(str) + "%",
        "flags": table["flag_codes"].map(lambda d: ", ".join(f"{k} {v}" for k, v in d.items())),
    })


def robustness_chart(table: pd.DataFrame) -> go.Figure:
    """MAE per perturbation (coloured by kind) against the unperturbed MAE; the flagged share
    and bias on hover."""
    fig = go.Figure()
    for kind, part in table.groupby("kind", sort=False):
        fig.add_bar(x=part["perturbation"], y=part["mae"], name=KIND_WORDS.get(kind, kind),
                    marker_color=KIND_COLORS.get(kind, "#596275"),
                    customdata=list(zip(part["bias"], 100 * part["flagged"], part["description"])),
                    hovertemplate="%{x}: MAE %{y:.2f} mo<br>bias %{customdata[0]:+.2f} mo<br>"
                                  "flagged %{customdata[1]:.1f}%<br>%{customdata[2]}<extra></extra>")
    base = table.loc[table["kind"] == "baseline", "mae"]
    if len(base):
        fig.add_hline(y=float(base.iloc[0]), line_dash="dot", line_color="#9a9a9a",
                      annotation_text="unperturbed", annotation_position="top left")
    fig.update_layout(title="MAE when the same radiographs are made differently", xaxis_title="",
                      yaxis_title="MAE (months)", barmode="group")
    return style(fig, height=400)


def robustness_section(run_dir: str | Path, data_dir: str | Path | None, split: str | None) -> None:
    """Button -> report (progress bar) -> table + bar chart; a finished report shows at once."""
    st.subheader("Robustness to how the image was made")
    st.caption("Each radiograph is perturbed before the run's own preprocessing (gamma, blur, JPEG, "
               "resampling filters, noise, resolution, inversion, rotation), saved as an 8-bit PNG and "
               "predicted as an upload: MAE, bias, how far the answer moved, and the share the predictor "
               "flagged (image checks and the out-of-distribution check). Benign perturbations should move "
               "the MAE little; wrong-way-round images should be flagged.")
    name = Path(run_dir).name
    c1, c2, c3 = st.columns([1, 1, 2])
    limit = int(c1.number_input("Images", 1, MAX_LIMIT, DEFAULT_LIMIT, step=50, key=f"rob_limit_{name}",
                                help="a seeded sample of this many images (14 predictions each)"))
    ood = c2.checkbox("Out-of-distribution check", value=True, key=f"rob_ood_{name}",
                      help="the embedding check the predictor runs; off is faster but flags less")
    key = _key(run_dir, data_dir, split, limit, ood)
    memo = _memo()
    if c3.button("Run robustness check", key=f"rob_run_{name}", disabled=key in memo):
        bar = st.progress(0.0, text="Perturbing and predicting…")
        try:
            memo[key] = robustness_report(run_dir, data_dir, split=split, limit=limit, ood=ood,
                                          progress=progress_callback(bar, "Robustness"))
        except (ValueError, FileNotFoundError, KeyError) as exc:
            st.error(f"{plain(name)}: {plain(exc, 600)}")
            return
        finally:
            bar.empty()
    result = memo.get(key)
    if result is None:
        st.info("Press the button to perturb the images and predict each one again "
                f"(about {limit * 14} predictions).")
        return
    info = result.info
    st.caption(f"{plain(info['run'])} on {info['n_images']} images ({plain(info['split'])}) of "
               f"{plain(Path(info['data']).name)}"
               + (f"; {info['n_in_training']} of them were trained on" if info["n_in_training"] else ""))
    st.dataframe(safe_table(display_table(result.table)), hide_index=True, width="stretch", key=f"rob_table_{name}")
    st.plotly_chart(robustness_chart(result.table), width="stretch", key=f"rob_chart_{name}")
    st.download_button("Per-image answers (CSV)", csv_bytes(result.per_image),
                       file_name=f"robustness-{name}.csv", mime="text/csv", key=f"rob_csv_{name}")
