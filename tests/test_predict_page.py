"""The predict page: AppTest with uploaded files (PNG, DICOM, a batch), the no-model offer,
and the real page in headless Chromium with a file uploaded through the browser."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from h2a.app.plain import plain
from h2a.data.datasets import load_dataset
from tests.browser import screenshot
from tests.conftest import open_page
from tests.corpus import PATIENT_ID, PATIENT_NAME, make_dicom

PAGE = "app_pages/predict.py"


def _text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader"):
        parts += [str(e.value) for e in at.get(kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def demo_png(tiny_run, demo_dir) -> Path:
    meta = json.loads((tiny_run / "metadata.json").read_text())
    ds = load_dataset(demo_dir)
    rows = ds.meta[ds.meta["id"].astype(str).isin(set(meta["splits"]["validation"]))].sort_values("id")
    return Path(rows.iloc[0]["path"])


@pytest.fixture(scope="module")
def upload_files(tmp_path_factory, demo_png) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("page-files")
    u8 = np.asarray(Image.open(demo_png).convert("L"))
    v16 = u8.astype(np.uint16) * 257
    mono1 = make_dicom(d / "hand.dcm", photometric="MONOCHROME1", array=65535 - v16, sex="F",
                       birth_date="20150302", study_date="20260115", window=(32767.5, 65536))
    white = io.BytesIO()
    Image.fromarray(np.full((400, 300), 255, np.uint8)).save(white, format="PNG")
    return {"png": demo_png.read_bytes(), "dcm": mono1.read_bytes(), "corrupt": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
            "white": white.getvalue()}


def _submit(at: AppTest) -> AppTest:
    [button] = [b for b in at.button if b.label.startswith("Estimate bone age")]
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_png_upload_predicts_with_chart_heatmap_and_pdf(tiny_run, upload_files) -> None:
    at = open_page(PAGE)
    at.file_uploader(key="predict_files").set_value(("hand.png", upload_files["png"], "image/png")).run()
    radio = at.radio[0]
    assert radio.label == "Sex (required)" and radio.value is None  # never defaulted
    _submit(at)
    assert any("Choose the sex" in e.value for e in at.error)  # required, and the page says so
    assert not at.metric
    at.radio[0].set_value("male")
    at.number_input(key=[n.key for n in at.number_input if n.label.startswith("…or age")][0]).set_value(120)
    _submit(at)
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert re.fullmatch(r"\d+\.\d", metrics["Bone age (months)"])
    assert re.fullmatch(r"[+-]\d\.\d\d", metrics["SDS"])
    assert len(at.get("image")) == 2  # the radiograph next to the heat map
    assert at.slider[0].label == "Heat-map opacity"
    assert len(at.get("plotly_chart")) == 1
    assert any(d.proto.label == "Download PDF report" for d in at.get("download_button"))
    text = _text(at)
    assert "synthetic" in text.lower()  # the demo-trained model is labelled as such
    assert "Greulich" in text
    # moving the slider re-draws without recomputing or losing the result
    at.slider[0].set_value(0.8).run()
    assert {m.label: m.value for m in at.metric}["Bone age (months)"] == metrics["Bone age (months)"]


def test_dicom_prefills_sex_and_dates(tiny_run, upload_files) -> None:
    at = open_page(PAGE)
    at.file_uploader(key="predict_files").set_value(("hand.dcm", upload_files["dcm"], "application/dicom")).run()
    assert at.radio[0].value == "female"  # from PatientSex, for the user to confirm
    dates = {d.label: d.value for d in at.date_input}
    assert str(dates["Date of birth"]) == "2015-03-02" and str(dates["Exam date"]) == "2026-01-15"
    _submit(at)
    assert not at.error, [e.value for e in at.error]
    frame = at.dataframe[0].value
    values = dict(zip(frame.iloc[:, 0], frame["value"]))
    assert values["Sex"] == "female (from the DICOM header)"
    assert values["Age from"] == "DICOM dates"
    assert values["Classification"] in ("delayed", "within normal limits", "advanced")
    text = _text(at)
    for ident in (PATIENT_NAME, "Doe", PATIENT_ID, "ACC-987654"):
        assert ident not in text


def test_batch_table_shows_errors_per_file(tiny_run, upload_files) -> None:
    at = open_page(PAGE)
    at.file_uploader(key="predict_files").set_value([
        ("hand.dcm", upload_files["dcm"], "application/dicom"),
        ("nosex.png", upload_files["png"], "image/png"),
        ("broken.png", upload_files["corrupt"], "image/png"),
    ]).run()
    _submit(at)
    frame = _results(at)
    assert list(frame["file"]) == ["hand.dcm", "nosex.png", "broken.png"]
    assert frame.loc[0, "sex"] == "female" and np.isfinite(frame.loc[0, "bone age (mo)"])
    assert frame.loc[1, "error"].startswith("sex is needed")
    assert "damaged" in frame.loc[2, "error"] or "truncated" in frame.loc[2, "error"]
    assert any("2 of 3 files could not be predicted" in w.value for w in at.warning)
    assert any(d.proto.label == "Download the table (CSV)" for d in at.get("download_button"))
    # the fill-in radio gives the PNG a sex: now it predicts too
    at.radio(key="predict_fill_sex").set_value("male")
    _submit(at)
    frame = _results(at)
    assert frame.loc[1, "sex"] == "male" and np.isfinite(frame.loc[1, "bone age (mo)"])
    assert frame["error"].isna().sum() == 2


def _results(at: AppTest):
    """The batch results table (the input table is a data_editor, also listed as a dataframe)."""
    return next(d.value for d in at.dataframe if "bone age (mo)" in d.value.columns)


def test_coded_warnings_are_shown_by_code(tiny_run, upload_files) -> None:
    """A blank image: the page shows the 'uniform' and OOD alerts as errors (the estimate may be
    meaningless) and the synthetic-model alert as a warning, each with its own message."""
    from h2a.data.imageio import read_image
    from h2a.predict.alerts import Code
    from h2a.predict.checks import image_checks

    at = open_page(PAGE)
    at.file_uploader(key="predict_files").set_value(("blank.png", upload_files["white"], "image/png")).run()
    at.radio[0].set_value("female")
    _submit(at)
    [uniform] = [a for a in image_checks(read_image(upload_files["white"], "blank.png")) if a.code == Code.UNIFORM]
    errors = [e.value for e in at.error]
    assert plain(uniform.message, 1000) in errors, errors  # as text: the Markdown source escapes it
    assert any("unlike the model's training images" in e for e in errors), errors
    assert any("SYNTHETIC" in w.value for w in at.warning)
    assert at.metric  # the numbers are still shown, under the alerts


def test_batch_table_columns_read_codes() -> None:
    """The batch table's OOD column and warnings column come from codes, not from wording."""
    from h2a.app.predict_ui import results_frame
    from h2a.predict.alerts import Alert, Code
    from h2a.predict.predictor import PredictionResult

    def result(*alerts: Alert) -> PredictionResult:
        return PredictionResult(file="x.png", bone_age_months=100.0, interval_months=(90.0, 110.0),
                                warnings=list(alerts))

    reworded = Alert(Code.OUT_OF_DISTRIBUTION, "reworded: nothing like the training set")
    lookalike = Alert(Code.NOISE, "this image looks unlike the model's training images")  # old wording, other code
    frame = results_frame([result(reworded), result(lookalike), result()])
    assert list(frame["OOD"]) == ["yes", "no", "no"]
    assert list(frame["warnings"]) == ["out_of_distribution", "noise", ""]


def test_no_model_offers_to_train_instead_of_failing(monkeypatch, tmp_path, demo_dir) -> None:
    from h2a.engine.jobs import force_stop

    models = tmp_path / "no-models"
    monkeypatch.setenv("H2A_MODELS_DIR", str(models))
    at = open_page(PAGE)
    assert any("no trained bone-age model" in w.value.lower() for w in at.warning)
    [train] = [b for b in at.button if b.label == "Train a quick model in the background"]
    assert not at.file_uploader  # nothing to predict with yet
    train.click().run()
    assert not at.exception, [e.value for e in at.exception]
    started = list(models.iterdir())
    try:
        assert len(started) == 1 and (started[0] / "config.json").exists()
        cfg = json.loads((started[0] / "config.json").read_text())
        assert cfg["arch"] == "tiny_cnn" and cfg["task"] == "boneage" and cfg["data"] == str(demo_dir)
        assert plain(started[0].name) in _text(at)  # the live monitor shows the run (as text)
    finally:
        for run_dir in started:
            force_stop(run_dir)


# ---------------------------------------------------------------- the real page in Chromium

@pytest.mark.browser
def test_upload_in_chromium_shows_bone_age(app_url, browser, demo_png) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{app_url}/predict")
    page.wait_for_selector('input[type="file"]', state="attached", timeout=120_000)
    page.set_input_files('input[type="file"]', str(demo_png))
    page.get_by_text("Sex (required)").wait_for(timeout=60_000)
    page.get_by_text("male", exact=True).click()
    page.get_by_role("button", name="Estimate bone age").click()
    value = page.locator('[data-testid="stMetricValue"]').first
    value.wait_for(timeout=180_000)
    assert re.fullmatch(r"\d+\.\d", value.inner_text().strip())
    page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.inner_text("body")
    screenshot(page, "predict")
    page.close()
    assert not errors, errors
