"""AppTest of the Studies page: empty, with a finished arm study, and starting a study."""

from __future__ import annotations

from pathlib import Path

import pytest

from h2a.app.plain import plain
from h2a.settings import get_settings
from tests.conftest import open_page
from tests.study_fixtures import arm_study


@pytest.fixture
def storage(tmp_path, monkeypatch) -> str:
    """A study storage of this test's own (the workspace stays shared with other tests)."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    monkeypatch.setenv("H2A_STUDY_STORAGE", url)
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    return url


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    for kind in ("info", "success", "error", "warning"):
        parts += [e.value for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_page_renders_with_no_studies(demo_dir, storage) -> None:
    at = open_page("app_pages/studies.py")
    assert at.title[0].value == "Studies"
    assert any("No studies yet" in i.value for i in at.info)
    assert any(b.label == "Start study" for b in at.button)
    # the form's data folder defaults to the active dataset
    assert Path(at.text_input(key="study_data").value) == demo_dir.resolve()


def test_page_shows_a_finished_arm_study(demo_dir, storage) -> None:
    arm_study("page-arms", get_settings().models_dir, data=str(demo_dir))
    at = open_page("app_pages/studies.py")
    assert at.selectbox(key="study_pick").value == "page-arms"
    studies = at.dataframe[0].value
    assert studies.loc[0, "study"] == "page-arms" and studies.loc[0, "trials"] == "4 done / 4"
    text = _texts(at)
    verdicts = [s.value for s in at.success]
    # arm names come from the study's space: the verdict is shown as text
    assert any(v.startswith(plain("without-sex is 4.1 months worse than with-sex (95% CI")) for v in verdicts), verdicts
    tables = [d.value for d in at.dataframe]
    arms = next(t for t in tables if "95% CI" in t.columns)
    assert arms.loc[0, "arm"] == "without-sex" and arms.loc[0, "significant"] == "yes"
    findings = next(t for t in tables if "holds?" in t.columns)
    assert findings.loc[0, "holds?"] == "yes"
    assert len(at.get("plotly_chart")) >= 3  # forest plot, trials over time, parallel coordinates
    assert "Parameter importances: no numeric parameter" in text
    assert any(d.label == "Download trials (CSV)" for d in at.get("download_button"))


def test_starting_a_study_from_the_form_launches_a_job(demo_dir, storage, monkeypatch) -> None:
    from h2a.app import study_ui

    started = []

    def fake_start(spec):
        started.append(spec)
        return get_settings().workspace / "studies" / spec.name

    monkeypatch.setattr(study_ui, "start_study_job", fake_start)
    at = open_page("app_pages/studies.py")
    at.text_input(key="study_name").set_value("form-study")
    at.selectbox(key="study_preset").set_value("transfer")
    at.number_input(key="study_minutes").set_value(1.5)
    at.number_input(key="study_workers").set_value(2)
    next(b for b in at.button if b.label == "Start study").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    [spec] = started
    assert (spec.name, spec.preset, spec.trial_minutes, spec.workers) == ("form-study", "transfer", 1.5, 2)
    assert Path(spec.data) == demo_dir.resolve() and spec.trials is None and spec.pruner is None


def test_bad_form_input_is_a_clear_error_and_starts_nothing(demo_dir, storage, monkeypatch) -> None:
    from h2a.app import study_ui

    started = []
    monkeypatch.setattr(study_ui, "start_study_job", lambda spec: started.append(spec))
    at = open_page("app_pages/studies.py")

    def submit(**values) -> list[str]:
        for key, value in values.items():
            widget = at.text_input(key=key) if key in ("study_name", "study_data") else at.selectbox(key=key)
            widget.set_value(value)
        next(b for b in at.button if b.label == "Start study").click()
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return [e.value for e in at.error]

    assert any(plain("Study name '../evil'") in e for e in submit(study_name="../evil"))  # shown as text
    assert any("outside the folders this server shares" in e for e in submit(study_name="ok", study_data="/etc"))
    errors = submit(study_name="ok", study_data=str(demo_dir), study_preset="Upload a YAML space…")
    assert any("choose a YAML space file" in e for e in errors)
    assert started == []
