"""AppTest for the sex and clusters pages on the demo data: no exception, the charts and
tables are there, the clusters come from their background job and are reused on a rerun,
parameters take effect."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.conftest import REPO, settle
from tests.test_sex import make_sex_run


def _open(page: str, monkeypatch) -> AppTest:
    """The page inside the app when streamlit_app.py registers it, else the page file alone."""
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    if page in (REPO / "streamlit_app.py").read_text():
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
        at.run()
        at.switch_page(page)
    else:
        at = AppTest.from_file(str(REPO / page), default_timeout=300)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    settle(at)  # the Sex page evaluates its run in the background first
    assert not at.error, [e.value for e in at.error]
    return at


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


def test_sex_page_with_a_finished_run(demo_dir: Path, workspace: Path, monkeypatch) -> None:
    run = make_sex_run(demo_dir, workspace)
    # the page opens the newest sex run: make it this demo run, not one another module trained on
    # images outside the app's data roots (whose images the page rightly refuses to read)
    (run / "metadata.json").touch()
    at = _open("app_pages/sex.py", monkeypatch)
    assert at.title[0].value == "Sex from the image"
    assert any("synthetic" in i.value.lower() for i in at.info)
    labels = [m.label for m in at.metric]
    for label in ("ROC-AUC", "95% interval", "Accuracy", "Balanced accuracy"):
        assert label in labels, labels
    assert at.radio(key="sex_source").value == "holdout"  # the held-out split is preferred when the run has one
    text = _text(at)
    assert "tells boys from girls" in text and "bootstrap interval" in text
    charts = at.get("plotly_chart")
    assert len(charts) >= 6, len(charts)  # ROC, confusion, age bands, calibration, histogram, curves
    assert len(at.get("image")) >= 2  # confident right and wrong cases with CAM overlays
    at.radio(key="sex_source").set_value("validation").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "validation" in at.radio(key="sex_source").value


def test_clusters_page_fills_in_from_its_background_job(demo_dir: Path, monkeypatch) -> None:
    from tests.test_background_jobs import finished
    from tests.test_cluster_jobs_page import assert_clusters_shown, default_job

    at = _open("app_pages/clusters.py", monkeypatch)  # asks for the job (or finds it done) and returns
    assert at.title[0].value == "Clusters of CNN embeddings"
    job = default_job(demo_dir)
    assert finished(job)["status"] == "finished", job.log_tail()
    at.run()
    tables = assert_clusters_shown(at)
    assert sum(tables[0]["images"]) == sum(tables[1]["images"]) > 100
    assert "clusters follow sex" in _text(at)
    assert "Selected images (0)" in [s.value for s in at.subheader]

    at.run()  # a rerun with the same inputs: the job's stored answer, no new job
    assert f"background job `{job.name}`" in _text(at)

    at.radio(key="cl_color").set_value("boneage").run()
    assert not at.exception, [e.value for e in at.exception]
    at.number_input(key="cl_k").set_value(3)
    next(b for b in at.button if b.label == "Compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    k3 = default_job(demo_dir, k=3)
    assert finished(k3)["status"] == "finished", k3.log_tail()
    at.run()
    assert all(len(df.value) == 3 for df in at.dataframe)
