"""Findings: a study written up as Markdown with its plots (``h2a study report NAME``).

The report is what a researcher keeps or pastes into a paper's notes: what was asked (the
preset's seed claim), how (data, budget, trials), what came out (the best trial, the arm
comparisons with their paired-bootstrap CIs and plain verdicts, the clusters table), and
the plots: Optuna's optimisation history, parameter importances and parallel coordinates,
plus a forest plot of the arm differences.

Plotly figures become PNGs when kaleido (Plotly's static-image engine) is installed and
works; otherwise each is a standalone HTML file next to the report (one shared
``plotly.min.js``, so it opens offline), and the report says which. Tables are also written
as CSV through ``h2a.exports`` (spreadsheet-safe).

The tables and figures here are also what the Studies page shows (``h2a.app.study_ui``
wraps them): one builder for both. Core module: no streamlit.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from h2a.analysis.cluster_config import FOLLOWS_FROM
from h2a.exports import write_csv
from h2a.inference.metrics import json_safe
from h2a.studies import load_study, study_summary

__all__ = ["SEED_CLAIMS", "StudyFigure", "clusters_frame", "comparison_figure", "comparisons_frame",
           "confirmation_frame", "findings_rows", "kaleido_available", "study_figures", "trials_frame", "write_report"]

REPORT = "report.md"

# What each preset's seed paper claims, and which arm would have to be worse than the
# reference for the claim to hold (``findings_rows`` says whether it does).
SEED_CLAIMS: dict[str, dict[str, str]] = {
    "sex-input": {"claim": "Feeding sex to the model lowers MAE (validation 7.21 months with, 9.44 without)",
                  "arm": "without-sex", "expect": "worse"},
    "transfer": {"claim": "ImageNet pretraining beats random initialisation (8.8 vs 10.8 months after 250 epochs)",
                 "arm": "random-init", "expect": "worse"},
}
CLUSTERS_CLAIM = "Clustering CNN embeddings groups children by sex"
SEARCH_CLAIM = "The search finds settings that beat its base settings under the same time budget"


# ---------------------------------------------------------------- tables

def _fmt(value: Any, digits: int = 2, fixed: bool = False) -> str:
    """A figure for a table: ``digits`` decimals; a small number (a learning rate) in 3
    significant digits unless ``fixed`` (scores such as ARI, where 0.00 is the point)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        small = not fixed and value != 0 and abs(value) < 10 ** -digits * 10
        return f"{value:.3g}" if small else f"{value:,.{digits}f}"
    return str(value)


def trials_frame(summary: dict) -> pd.DataFrame:
    """One row per trial: number, state, arm, seed, value, each parameter, run, duration."""
    rows = []
    for t in summary.get("trials") or []:
        row = {"number": t.get("number"), "state": t.get("state"), "arm": t.get("arm"), "seed": t.get("seed"),
               "value": t.get("value"), "run": t.get("run"), "duration_s": t.get("duration_s")}
        for key, value in (t.get("params") or {}).items():
            if key not in ("arm", "seed"):
                row[f"param_{key}"] = value
        if t.get("error"):
            row["error"] = t["error"]
        if summary.get("baseline"):
            row["baseline"] = bool(t.get("baseline"))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["number", "state", "arm", "seed", "value", "run", "duration_s"])
    return frame.dropna(axis=1, how="all") if frame["arm"].isna().all() else frame


COMPARISON_COLUMNS = ["arm", "reference", "metric", "n_images", "n_seeds_arm", "n_seeds_reference", "value_arm",
                      "value_reference", "difference", "ci_low", "ci_high", "significant", "p_value", "verdict"]


def comparisons_frame(comparisons: list[dict]) -> pd.DataFrame:
    """The arm table: one row per arm against the reference, with the CI and the verdict."""
    return pd.DataFrame([{c: row.get(c) for c in COMPARISON_COLUMNS} for row in comparisons or []],
                        columns=COMPARISON_COLUMNS)


CLUSTER_COLUMNS = ["source", "space", "n", "ari_sex", "nmi_sex", "ari_age_band", "nmi_age_band", "purity_sex",
                   "purity_baseline", "embedding", "error"]


def clusters_frame(clusters: dict | None) -> pd.DataFrame:
    """The clusters table: one row per embedding source and space (UMAP map / full embedding)."""
    rows = (clusters or {}).get("rows") or []
    return pd.DataFrame([{c: row.get(c) for c in CLUSTER_COLUMNS} for row in rows], columns=CLUSTER_COLUMNS)


def confirmation_frame(confirmation: dict | None) -> pd.DataFrame:
    """A confirmed search (``h2a.studies.confirm``): the best trial against the base, one row
    on validation (what decides) and one on held-out (measured once)."""
    columns = ["split", "images", "best", "base", "difference", "95% CI", "significant", "verdict"]
    rows = []
    for split, what in (("validation", "validation (one view; decides)"), ("holdout", "held-out (measured once)")):
        c = (confirmation or {}).get(split)
        if not c or c.get("difference") is None:
            continue
        rows.append({"split": what, "images": c.get("n_images"), "best": c.get("value_arm"),
                     "base": c.get("value_reference"), "difference": c["difference"],
                     "95% CI": f"{c['ci_low']:+.2f} to {c['ci_high']:+.2f}",
                     "significant": "yes" if c.get("significant") else "no",
                     "verdict": c.get("verdict")})
    return pd.DataFrame(rows, columns=columns)


def _search_finding(c: dict) -> dict:
    """The findings row of a confirmed search: holds when the best trial was adopted."""
    metric = c["metric"].upper()
    held = c.get("holdout_values") or {}
    if c.get("validation") is None:
        base = c["baseline"]
        return {"claim": SEARCH_CLAIM, "holds": "no",
                "measurement": f"the base settings (trial {base['number']}) had the best validation {metric} "
                               f"({base['value']:.2f}) of {c.get('n_finished_trials')} finished trials; held-out "
                               f"{metric} {_fmt(next(iter(held.values()), None))} ({c.get('n_holdout'):,} images)"}
    v, h = c["validation"], c.get("holdout") or {}
    measurement = (f"best trial {c['best']['number']} against the base: validation {metric} {v['value_arm']:.2f} vs "
                   f"{v['value_reference']:.2f} (difference {v['difference']:+.2f}, 95% CI {v['ci_low']:+.2f} to "
                   f"{v['ci_high']:+.2f}, {v['n_images']:,} images)")
    if h.get("difference") is not None:
        measurement += (f"; held-out once {h['value_arm']:.2f} vs {h['value_reference']:.2f} (difference "
                        f"{h['difference']:+.2f}, 95% CI {h['ci_low']:+.2f} to {h['ci_high']:+.2f}, "
                        f"{h['n_images']:,} images)")
    return {"claim": SEARCH_CLAIM, "measurement": measurement,
            "holds": "yes" if c.get("adopt") else "not shown at this size"}


def findings_rows(summary: dict) -> list[dict]:
    """README-style findings: ``claim``, ``measurement`` (with its CI) and ``holds``
    ('yes', 'no', 'not shown at this size' or 'no comparison yet') for a preset with a seed
    claim; one row per embedding source for a clusters study (ARI vs sex; "holds" when the
    clusters follow sex by ``h2a.analysis.clustering``'s threshold); for a confirmed search, whether
    its best trial beat the base settings on validation (``h2a study confirm``)."""
    out = []
    claim = SEED_CLAIMS.get(summary.get("preset") or "")
    if claim:
        row = next((c for c in summary.get("comparisons") or [] if c.get("arm") == claim["arm"]), None)
        if row is None or row.get("difference") is None:
            out.append({"claim": claim["claim"], "measurement": row["verdict"] if row else "no held-out comparison yet",
                        "holds": "no comparison yet"})
        else:
            lower_better = row["metric"] == "mae"
            worse = (row["difference"] > 0) == lower_better
            holds = ("not shown at this size" if not row["significant"]
                     else "yes" if worse == (claim["expect"] == "worse") else "no")
            unit = " months" if row["metric"] == "mae" else ""
            out.append({"claim": claim["claim"], "holds": holds,
                        "measurement": f"held-out {row['metric'].upper()} {row['value_reference']:.2f} "
                                       f"({row['reference']}) vs {row['value_arm']:.2f} ({row['arm']}): "
                                       f"difference {row['difference']:+.2f}{unit}, 95% CI {row['ci_low']:+.2f} to "
                                       f"{row['ci_high']:+.2f}, {row['n_images']:,} images"})
    for row in (summary.get("clusters") or {}).get("rows") or []:
        if row.get("space") != "umap" or row.get("ari_sex") is None:
            continue
        full = next((r for r in summary["clusters"]["rows"]
                     if r.get("source") == row["source"] and r.get("space") == "full"), {})
        best = max(v for v in (row["ari_sex"], full.get("ari_sex")) if v is not None)
        out.append({"claim": f"{CLUSTERS_CLAIM} ({row['source']} embeddings)",
                    "measurement": f"k = {summary['clusters'].get('k')}, {row['n']:,} images: ARI vs sex "
                                   f"{row['ari_sex']:.2f} on the UMAP map, {_fmt(full.get('ari_sex'), fixed=True)} on "
                                   f"the full embedding; ARI vs age band {_fmt(row.get('ari_age_band'), fixed=True)} / "
                                   f"{_fmt(full.get('ari_age_band'), fixed=True)}",
                    "holds": "yes" if best >= FOLLOWS_FROM else "no"})
    if summary.get("confirmation"):
        out.append(_search_finding(summary["confirmation"]))
    return out


# ---------------------------------------------------------------- figures

@dataclass
class StudyFigure:
    """A figure of a study, or why there is none (too few trials, no numeric parameter)."""

    key: str  # file stem: "history", "importances", "parallel", "arms"
    title: str
    figure: Any | None  # plotly Figure
    note: str = ""


def _complete(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def _numeric_params(trials: list) -> list[str]:
    from optuna.distributions import FloatDistribution, IntDistribution

    names = {n for t in trials for n, d in t.distributions.items() if isinstance(d, (FloatDistribution, IntDistribution))}
    return sorted(names)


def _varying_params(trials: list) -> list[str]:
    names = sorted({n for t in trials for n in t.params})
    return [n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1]


def _guard(key: str, title: str, build) -> StudyFigure:
    try:
        return StudyFigure(key, title, build())
    except Exception as exc:  # noqa: BLE001 - Optuna raises many kinds on odd studies; a page never crashes
        return StudyFigure(key, title, None, f"not drawn: {type(exc).__name__}: {exc}")


def study_figures(study, metric: str | None = None) -> list[StudyFigure]:
    """Optuna's Plotly figures for ``study``: trials over time, parameter importances and
    parallel coordinates, each None with a ``note`` when it cannot be drawn (importances need
    at least 2 finished trials and a numeric parameter; parallel coordinates 2 finished
    trials with a parameter that varies)."""
    import optuna.visualization as vis

    label = (metric or study.user_attrs.get("metric") or "value").upper()
    done = _complete(study)
    figures = []
    if not done:
        figures.append(StudyFigure("history", "Trials over time", None, "no finished trial yet"))
    else:
        figures.append(_guard("history", "Trials over time",
                              lambda: vis.plot_optimization_history(study, target_name=f"validation {label}")))
    varying = _varying_params(done)
    if len(done) < 2:
        figures.append(StudyFigure("importances", "Parameter importances", None, "needs at least 2 finished trials"))
    elif not _numeric_params(done):
        figures.append(StudyFigure("importances", "Parameter importances", None,
                                   "no numeric parameter (an arm study: the arm table answers its question)"))
    elif not varying:
        figures.append(StudyFigure("importances", "Parameter importances", None, "no parameter varies between trials"))
    else:
        figures.append(_guard("importances", "Parameter importances",
                              lambda: vis.plot_param_importances(study, params=varying,
                                                                 target_name=f"validation {label}")))
    if len(done) < 2 or not varying:
        figures.append(StudyFigure("parallel", "Parallel coordinates", None,
                                   "needs at least 2 finished trials with a parameter that varies"))
    else:
        figures.append(_guard("parallel", "Parallel coordinates",
                              lambda: vis.plot_parallel_coordinate(study, params=varying,
                                                                   target_name=f"validation {label}")))
    return figures


def comparison_figure(comparisons: list[dict]):
    """Forest plot: each arm's held-out difference from the reference with its 95% CI, and 0."""
    import plotly.graph_objects as go

    rows = [c for c in comparisons or [] if c.get("difference") is not None]
    if not rows:
        return None
    metric = rows[0]["metric"].upper()
    fig = go.Figure()
    colors = ["#d62728" if c["significant"] else "#7f7f7f" for c in rows]
    fig.add_trace(go.Scatter(
        x=[c["difference"] for c in rows], y=[c["arm"] for c in rows], mode="markers",
        marker=dict(size=11, color=colors),
        error_x=dict(type="data", symmetric=False, array=[c["ci_high"] - c["difference"] for c in rows],
                     arrayminus=[c["difference"] - c["ci_low"] for c in rows], color="#555"),
        hovertext=[c["verdict"] for c in rows], hoverinfo="text", name="arm - reference"))
    fig.add_vline(x=0, line_dash="dash", line_color="#999")
    ref = rows[0]["reference"]
    better = "lower is better" if metric == "MAE" else "higher is better"
    fig.update_layout(title=f"Held-out {metric}: each arm minus {ref} (95% paired-bootstrap CI; {better})",
                      xaxis_title=f"{metric} difference" + (" (months)" if metric == "MAE" else ""),
                      yaxis=dict(autorange="reversed"), height=140 + 50 * len(rows),
                      margin=dict(l=10, r=10, t=60, b=40), showlegend=False)
    return fig


# ---------------------------------------------------------------- the report

def kaleido_available() -> bool:
    """Whether Plotly can write PNGs here (the kaleido package is importable)."""
    return importlib.util.find_spec("kaleido") is not None


def _save_figure(fig, stem: Path, png: bool) -> tuple[Path, str]:
    """Write ``fig`` as ``stem.png`` when possible, else ``stem.html``; returns (path, kind)."""
    if png:
        try:
            path = stem.with_suffix(".png")
            fig.write_image(str(path), width=1000, height=fig.layout.height or 500, scale=1)
            return path, "png"
        except Exception:  # noqa: BLE001, S110 - kaleido present but unusable (no Chrome): HTML below
            pass
    path = stem.with_suffix(".html")
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path, "html"


def _cell(value: Any, fixed: bool = False) -> str:
    """A Markdown table cell: pipes and line breaks escaped (names and errors are free text)."""
    return _fmt(value, fixed=fixed).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(frame: pd.DataFrame, columns: list[str], headers: list[str] | None = None,
           fixed: bool = False) -> list[str]:
    headers = headers or columns
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_cell(row.get(c), fixed) for c in columns) + " |")
    return lines


def _comparison_lines(summary: dict) -> list[str]:
    comps = summary.get("comparisons") or []
    if not comps:
        return []
    lines = ["## Arms against the reference (held-out images, paired bootstrap)", ""]
    rows = []
    for c in comps:
        ci = "-" if c.get("ci_low") is None else f"{c['ci_low']:+.2f} to {c['ci_high']:+.2f}"
        rows.append({"arm": c["arm"], "reference": c["reference"], "images": c.get("n_images"),
                     "seeds": f"{c.get('n_seeds_arm')} / {c.get('n_seeds_reference')}",
                     "arm value": c.get("value_arm"), "reference value": c.get("value_reference"),
                     "difference": None if c.get("difference") is None else f"{c['difference']:+.2f}",
                     "95% CI": ci, "significant": c.get("significant"), "verdict": c.get("verdict")})
    frame = pd.DataFrame(rows)
    lines += _table(frame, list(frame.columns))
    metric = (comps[0].get("metric") or "mae").upper()
    lines += ["", f"Difference = arm - reference in held-out {metric}; significant = the 95% CI excludes 0. "
              "With several seeds an arm's per-image predictions are averaged over its seeds first.", ""]
    return lines


def _confirmation_lines(summary: dict) -> list[str]:
    c = summary.get("confirmation")
    if not c:
        return []
    lines = [f"## Best trial against the base settings (`h2a study confirm`, held-out with the mirror and "
             f"{c['views']} augmented views)", ""]
    frame = confirmation_frame(c)
    if not frame.empty:
        frame["difference"] = frame["difference"].map(lambda d: f"{d:+.2f}")
        lines += _table(frame, list(frame.columns)) + [""]
    values = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in (c.get("holdout_values") or {}).items())
    lines += [f"Held-out {c['metric'].upper()} ({c.get('n_holdout'):,} images): {values}.", "",
              f"**Decision:** {_cell(c['decision'])}. The best trial was picked on validation, so its lead there is "
              "optimistic; held-out was measured once and chose nothing.", ""]
    return lines


def _clusters_lines(summary: dict) -> list[str]:
    clusters = summary.get("clusters")
    if not clusters:
        return []
    frame = clusters_frame(clusters)
    lines = [f"## Clusters (k = {clusters.get('k')}, seed {clusters.get('seed')}, "
             f"{clusters.get('band_months', 24)}-month age bands)", ""]
    lines += _table(frame, ["source", "space", "n", "ari_sex", "nmi_sex", "ari_age_band", "nmi_age_band", "error"],
                    ["source", "space", "n", "ARI vs sex", "NMI vs sex", "ARI vs age band", "NMI vs age band",
                     "error"], fixed=True)
    lines += ["", "ARI: 0 = chance, 1 = the clusters are the classes. 'umap' = k-means on the 2-D UMAP map, "
              "'full' = on the standardised, PCA-reduced embedding.", ""]
    return lines


def _figure_lines(figures: list[tuple[StudyFigure, Path | None, str]], png: bool) -> list[str]:
    lines = ["## Plots", ""]
    drawn = [kind for _, path, kind in figures if path is not None]
    if drawn:
        lines.append("Plots are PNG images." if all(k == "png" for k in drawn) else
                     "Plots are standalone HTML files (open them in a browser; they share plotly.min.js "
                     "in this folder): "
                     + ("kaleido is installed but could not write PNGs here." if png
                        else "kaleido, Plotly's PNG engine, is not installed."))
        lines.append("")
    for fig, path, kind in figures:
        if path is None:
            lines.append(f"- {fig.title}: {fig.note}")
        elif kind == "png":
            lines.append(f"![{fig.title}]({path.name})")
        else:
            lines.append(f"- [{fig.title}]({path.name})")
    return lines + [""]


def write_report(name: str, storage: str | None, out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` for study ``name`` with its plots and CSV tables; returns
    the report's path. KeyError when there is no such study."""
    summary = json_safe(study_summary(name, storage))
    study = load_study(name, storage)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = kaleido_available()

    # a clusters study has no trials to plot: its table is the answer
    figures = [] if summary.get("kind") == "clusters" else list(study_figures(study, summary.get("metric")))
    figures.append(StudyFigure("arms", "Arm differences with 95% CIs", comparison_figure(summary.get("comparisons")),
                               "no arm comparison"))
    saved = []
    for fig in figures:
        if fig.figure is None:
            if fig.key != "arms" or summary.get("comparisons"):
                saved.append((fig, None, ""))
            continue
        path, kind = _save_figure(fig.figure, out_dir / fig.key, png)
        saved.append((fig, path, kind))

    trials = trials_frame(summary)
    write_csv(out_dir / "trials.csv", trials)
    csvs = ["trials.csv"]
    if summary.get("comparisons"):
        write_csv(out_dir / "comparisons.csv", comparisons_frame(summary["comparisons"]))
        csvs.append("comparisons.csv")
    if summary.get("confirmation"):
        write_csv(out_dir / "confirmation.csv", confirmation_frame(summary["confirmation"]))
        csvs.append("confirmation.csv")
    if summary.get("clusters"):
        write_csv(out_dir / "clusters.csv", clusters_frame(summary["clusters"]))
        csvs.append("clusters.csv")

    lines = [f"# Study {name}", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted((summary.get("states") or {}).items())) or "none"
    lines += [f"- preset: {_cell(summary.get('preset') or '(own space)')}; task: {_cell(summary.get('task'))}; "
              f"metric: validation {_cell((summary.get('metric') or '').upper())} ({_cell(summary.get('direction'))})",
              f"- data: `{summary.get('data')}`",
              f"- trials: {summary.get('n_trials', 0)} ({states}); {_cell(summary.get('trial_minutes'))} minutes per "
              f"trial; pruner: {_cell(summary.get('pruner'))}",
              f"- written {time.strftime('%Y-%m-%d %H:%M')}", ""]
    findings = findings_rows(summary)
    if findings:
        lines += ["## Findings", ""] + _table(pd.DataFrame(findings), ["claim", "measurement", "holds"],
                                               ["seed claim", "our measurement", "holds?"]) + [""]
    best = summary.get("best")
    if best:
        params = ", ".join(f"{k}={_fmt(v, 4)}" for k, v in (best.get("params") or {}).items()) or "-"
        lines += ["## Best trial", "",
                  f"Trial {best['number']}: validation {(summary.get('metric') or '').upper()} "
                  f"{_fmt(best.get('value'), 3)} (run {_cell(best.get('run'))}; {_cell(params)}).", ""]
        base = summary.get("baseline")
        if base:
            lines += [f"The base settings ran as trial {base['number']} ({base['state'].lower()}): validation "
                      f"{(summary.get('metric') or '').upper()} {_fmt(base.get('value'), 3)}, on the same machine, "
                      "budget and split as every other trial.", ""]
    lines += _comparison_lines(summary)
    lines += _confirmation_lines(summary)
    lines += _clusters_lines(summary)
    if saved:
        lines += _figure_lines(saved, png)
    if not trials.empty:
        lines += ["## Trials", ""]
        cols = [c for c in trials.columns if c not in ("duration_s", "error")]
        lines += _table(trials, cols) + [""]
    lines += ["Tables as CSV: " + ", ".join(f"[{c}]({c})" for c in csvs), "",
              "_Research use only: not for clinical decisions._", ""]
    path = out_dir / REPORT
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
