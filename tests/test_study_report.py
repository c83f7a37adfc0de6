"""``write_report``: the findings Markdown with the arm table, the clusters table and plots."""

from __future__ import annotations

import pandas as pd
import pytest

from h2a.settings import get_settings
from tests.study_fixtures import arm_study, search_study


@pytest.fixture(scope="module")
def studies() -> tuple[str, str]:
    models = get_settings().models_dir
    arm_study("report-arms", models)
    search_study("report-search", models)
    return "report-arms", "report-search"


def test_arm_study_report(studies, tmp_path) -> None:
    from h2a.studies.report import kaleido_available, write_report

    path = write_report(studies[0], None, tmp_path / "out")
    assert path == tmp_path / "out" / "report.md"
    text = path.read_text()
    assert text.startswith("# Study report-arms")
    # the findings table: the seed claim, our measurement with its CI, holds?
    assert "| seed claim | our measurement | holds? |" in text
    [finding] = [line for line in text.splitlines() if line.startswith("| Feeding sex")]
    assert "95% CI +3.9" in finding or "95% CI +4.0" in finding
    assert finding.endswith("| yes |")
    # the arm table with the plain-language verdict
    assert "without-sex is 4.1 months worse than with-sex (95% CI" in text
    assert "a real difference on these 120 images" in text
    comps = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert comps.loc[0, "arm"] == "without-sex" and bool(comps.loc[0, "significant"])
    assert comps.loc[0, "ci_low"] <= comps.loc[0, "difference"] <= comps.loc[0, "ci_high"]
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(trials) == 4 and set(trials["arm"]) == {"with-sex", "without-sex"}
    # plots: PNG with kaleido, otherwise linked standalone HTML, and the report says which
    ext = "png" if kaleido_available() else "html"
    for stem in ("history", "parallel", "arms"):
        assert (tmp_path / "out" / f"{stem}.{ext}").exists()
    if ext == "html":
        assert "kaleido, Plotly's PNG engine, is not installed" in text
        assert "[Trials over time](history.html)" in text and (tmp_path / "out" / "plotly.min.js").exists()
    # importances are skipped, with the reason, for categorical arm parameters
    assert "Parameter importances: no numeric parameter" in text


def test_search_report_draws_importances(studies, tmp_path) -> None:
    from h2a.studies import load_study
    from h2a.studies.report import study_figures, write_report

    figs = {f.key: f for f in study_figures(load_study(studies[1]))}
    assert all(f.figure is not None for f in figs.values()), {k: f.note for k, f in figs.items()}
    text = write_report(studies[1], None, tmp_path).read_text()
    assert "1 pruned" in text and "5 complete" in text
    assert "## Arms against" not in text and "## Findings" not in text  # no arms, no seed claim
    assert "Parameter importances" in text and "0.00178" in text  # learning rates in 3 significant digits


def test_report_with_clusters_and_odd_names(tmp_path) -> None:
    """A clusters study's table, and free text (a pipe in an error) that cannot break a table row."""
    import optuna

    from h2a.studies.report import findings_rows, write_report
    from h2a.studies.storage import open_storage

    study = optuna.create_study(study_name="report-clusters", storage=open_storage(None))
    rows = [{"source": s, "space": sp, "n": 240, "ari_sex": a, "nmi_sex": a, "ari_age_band": 0.3, "nmi_age_band": 0.4,
             "embedding": f"run:{s}", "error": None} for s, a in (("imagenet", 0.01), ("sex", 0.45))
            for sp in ("umap", "full")]
    rows.append({"source": "boneage", "space": None, "n": 0, "error": "no run at x | y"})
    clusters = {"rows": rows, "k": 2, "seed": 0, "band_months": 24}
    for key, value in {"space": {"clusters": {"k": 2}}, "preset": "clusters", "kind": "clusters", "task": "boneage",
                       "metric": "mae", "direction": "minimize", "clusters": clusters}.items():
        study.set_user_attr(key, value)
    text = write_report("report-clusters", None, tmp_path).read_text()
    assert "| source | space | n | ARI vs sex | NMI vs sex | ARI vs age band | NMI vs age band | error |" in text
    assert "| imagenet | umap | 240 | 0.01 | 0.01 | 0.30 | 0.40 | - |" in text
    assert "no run at x \\| y" in text
    holds = {r["claim"]: r["holds"] for r in findings_rows({"clusters": clusters})}
    assert holds == {"Clustering CNN embeddings groups children by sex (imagenet embeddings)": "no",
                     "Clustering CNN embeddings groups children by sex (sex embeddings)": "yes"}
    assert pd.read_csv(tmp_path / "clusters.csv")["source"].tolist()[:2] == ["imagenet", "imagenet"]
    assert "## Plots" not in text  # no trials: nothing to plot


def test_unknown_study_is_a_key_error(tmp_path) -> None:
    from h2a.studies.report import write_report

    with pytest.raises(KeyError, match="nope"):
        write_report("nope", None, tmp_path)
