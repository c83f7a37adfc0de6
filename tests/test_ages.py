"""Nonsense ages are refused (issue 17): a chronological age outside 0-30 years, a date of
birth more than 30 years before the exam or after it. Before, ``--age-months 100000`` or a
birth year 1800 came out as "delayed" with an SDS in the thousands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from h2a.predict.clinical import assess, chronological_age_months
from h2a.predict.inputs import check_call_inputs, resolve_age
from tests.conftest import run_cli


@pytest.mark.parametrize("months", [-1, 30 * 12 + 0.5, 100000, float("nan"), float("inf")])
def test_ages_outside_0_to_30_years_are_refused(months) -> None:
    from h2a.predict.clinical import check_age_months

    with pytest.raises(ValueError, match="0 to 30 years|number of months"):
        check_age_months(months)
    with pytest.raises(ValueError):
        assess(120.0, months, male=True)
    with pytest.raises(ValueError):
        resolve_age(age_months=months)
    with pytest.raises(ValueError):
        check_call_inputs(None, None, None, months, 1)


@pytest.mark.parametrize("months", [0, 0.5, 126.0, 30 * 12])
def test_plausible_ages_pass(months) -> None:
    from h2a.predict.clinical import MAX_AGE_YEARS, check_age_months

    assert MAX_AGE_YEARS == 30
    assert check_age_months(months) == months
    assert resolve_age(age_months=months)[0] == months


def test_birth_dates_more_than_30_years_before_the_exam_or_after_it_are_refused() -> None:
    assert chronological_age_months("1995-06-01", "2025-05-31") == pytest.approx(359.97, abs=0.05)
    with pytest.raises(ValueError, match="1800-01-01 is 225.4 years before the exam date 2025-06-01"):
        chronological_age_months("1800-01-01", "2025-06-01")
    with pytest.raises(ValueError, match="30 years"):
        chronological_age_months("1995-05-31", "2025-06-02")
    with pytest.raises(ValueError, match="before the date of birth"):
        chronological_age_months("2025-06-02", "2025-06-01")
    with pytest.raises(ValueError, match="years before the exam"):
        check_call_inputs("male", "1800-01-01", "2020-01-01", None, 1)  # the whole batch, up front


def test_a_dicom_patient_age_out_of_range_gives_no_sds_and_says_why() -> None:
    ca, source, alerts = resolve_age(dicom={"age_months": 150 * 12.0, "patient_age": "150Y"})
    assert ca is None and source is None
    assert alerts[0].code == "no_chronological_age" and "the DICOM PatientAge is 1800 months" in alerts[0].message
    ca, _, alerts = resolve_age(dicom={"birth_date": "18000101", "study_date": "20200101"})
    assert ca is None and "years before the exam" in alerts[0].message


@pytest.fixture(scope="module")
def demo_png(tiny_run, demo_dir, tmp_path_factory) -> Path:
    meta = json.loads((tiny_run / "metadata.json").read_text())
    vid = str(meta["splits"]["validation"][0])
    dest = tmp_path_factory.mktemp("ages") / "hand.png"
    shutil.copy(next(demo_dir.rglob(f"{vid}.png")), dest)
    return dest


@pytest.mark.parametrize("args, says", [
    (["--age-months", "100000"], "the age at exam is 100000 months (8333.3 years): H2A accepts 0 to 30 years"),
    (["--dob", "1800-01-01", "--exam-date", "2020-01-01"], "the date of birth 1800-01-01 is 220.0 years before"),
    (["--dob", "2020-01-02", "--exam-date", "2020-01-01"], "is before the date of birth"),
])
def test_predict_cli_refuses_nonsense_ages_with_one_line(tiny_run, demo_png, args, says) -> None:
    proc = run_cli("predict", "--model", str(tiny_run), str(demo_png), "--sex", "male", "--tta", "1", *args)
    assert proc.returncode == 2, proc.stdout
    assert says in proc.stderr and "Traceback" not in proc.stderr and "delayed" not in proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_predictor_the_page_uses_refuses_a_nonsense_age_per_file(tiny_run, demo_png) -> None:
    """The predict page calls ``Predictor.predict_image``: the file gets the error, no SDS."""
    from h2a.predict.predictor import Predictor

    p = Predictor(str(tiny_run))
    data = demo_png.read_bytes()
    bad = p.predict_image(data, "hand.png", sex="female", age_months=100000, tta=1, cam=False)
    assert not bad.ok and "0 to 30 years" in bad.error and bad.assessment is None
    bad = p.predict_image(data, "hand.png", sex="female", dob="1800-01-01", exam_date="2020-01-01", tta=1, cam=False)
    assert not bad.ok and "220.0 years before" in bad.error
    good = p.predict_image(data, "hand.png", sex="female", age_months=120, tta=1, cam=False)
    assert good.ok and good.assessment is not None and abs(good.assessment.sds) < 50
