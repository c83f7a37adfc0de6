"""Greulich-Pyle SDS and classification against cases worked out by hand from CLINICAL.md."""

from __future__ import annotations

from datetime import date

import pytest

from h2a.predict.clinical import (
    GP_TABLE,
    assess,
    chronological_age_months,
    classify,
    gp_reference,
    parse_date,
    reference_band,
)


def test_exact_row_boy_10_years() -> None:
    mean, sd, note = gp_reference(120, male=True)
    assert (mean, sd, note) == (pytest.approx(125.68), pytest.approx(9.79), None)
    a = assess(140.0, 120.0, male=True)
    # (140 - 120) / 9.79 = 2.0429 -> advanced
    assert a.sds == pytest.approx(20 / 9.79)
    assert a.sds == pytest.approx(2.0429, abs=1e-4)
    assert a.classification == "advanced"
    assert a.ba_minus_ca_months == pytest.approx(20.0)
    assert a.ba_minus_ca_years == pytest.approx(20 / 12)
    assert a.reference_mean_months == pytest.approx(125.68)
    assert not a.out_of_table


def test_interpolated_girl_7_5_years() -> None:
    mean, sd, note = gp_reference(90, male=False)
    assert sd == pytest.approx((9.64 + 10.23) / 2)  # 9.935
    assert mean == pytest.approx((89.30 + 100.66) / 2)
    assert note is None
    a = assess(80.0, 90.0, male=False)
    assert a.sds == pytest.approx(-10 / 9.935)
    assert a.classification == "within normal limits"
    assert a.ba_minus_ca_months == pytest.approx(-10.0)


def test_interpolation_is_linear_not_nearest() -> None:
    # boy 4.25 y = 51 months: halfway between the 4 y (6.66) and 4.5 y (8.36) rows
    _, sd, _ = gp_reference(51, male=True)
    assert sd == pytest.approx((6.66 + 8.36) / 2)
    # boy 10.25 y = 123 months: 9.79 + 0.25 * (10.09 - 9.79)
    _, sd, _ = gp_reference(123, male=True)
    assert sd == pytest.approx(9.79 + 0.25 * 0.30)


def test_girl_17_years_uses_16_year_row_and_says_so() -> None:
    mean, sd, note = gp_reference(17 * 12, male=False)
    assert (mean, sd) == (pytest.approx(189.44), pytest.approx(7.31))
    assert note and "16 y row" in note and "past the end" in note
    a = assess(200.0, 204.0, male=False)
    assert a.out_of_table
    assert a.sds == pytest.approx(-4 / 7.31)
    assert any("16 y row" in n for n in a.notes)
    # boys go one year further: 17 y is a real row for them
    mean, sd, note = gp_reference(17 * 12, male=True)
    assert (mean, sd, note) == (pytest.approx(206.21), pytest.approx(13.05), None)


def test_two_month_old_uses_first_row() -> None:
    mean, sd, note = gp_reference(2.0, male=True)
    assert (mean, sd) == (pytest.approx(3.01), pytest.approx(0.69))
    assert note and "0.25 y row" in note
    a = assess(1.0, 2.0, male=True)
    assert a.sds == pytest.approx(-1 / 0.69)
    assert a.out_of_table


@pytest.mark.parametrize("k, expected", [
    (-2.5, "delayed"), (-2.0001, "delayed"), (-2.0, "within normal limits"), (0.0, "within normal limits"),
    (2.0, "within normal limits"), (2.0001, "advanced"), (3.0, "advanced"),
])
def test_two_sd_boundaries(k: float, expected: str) -> None:
    # boy 10 y: SD 9.79, so BA = 120 + k * 9.79 gives SDS k (up to rounding)
    a = assess(120 + k * 9.79, 120.0, male=True)
    assert a.sds == pytest.approx(k)
    assert a.classification == expected


def test_classify_direct() -> None:
    assert classify(-2.01) == "delayed"
    assert classify(1.99) == "within normal limits"
    assert classify(2.01) == "advanced"


def test_notes_state_reference_limits_research_and_near_mature() -> None:
    a = assess(200.0, 192.0, male=False)  # girl: BA 16.7 y, within 2 y of the atlas end (18 y)
    text = " ".join(a.notes)
    assert a.near_mature and "near-mature" in text
    assert "Greulich" in text and "1930s" in text
    assert "Research use only" in text
    assert not assess(100.0, 100.0, male=False).near_mature


def test_chronological_age_from_dates() -> None:
    assert chronological_age_months("2015-03-02", "2026-01-15") == pytest.approx(
        (date(2026, 1, 15) - date(2015, 3, 2)).days / (365.25 / 12))
    assert chronological_age_months(date(2020, 1, 1), "20210101") == pytest.approx(366 / 30.4375)
    with pytest.raises(ValueError, match="before the date of birth"):
        chronological_age_months("2020-01-02", "2020-01-01")
    with pytest.raises(ValueError, match="not a date"):
        parse_date("01/02/2020")


def test_reference_band_matches_table() -> None:
    band = reference_band(male=False)
    assert band["ca"][0] == pytest.approx(3.0) and band["ca"][-1] == pytest.approx(192.0)
    i = int(list(band["ca"]).index(120.0))
    assert band["mean"][i] == pytest.approx(125.66)
    assert band["high"][i] == pytest.approx(120 + 2 * 11.73)
    assert len(GP_TABLE) == 24


def test_caveats_are_coded_alerts() -> None:
    from h2a.predict.alerts import Code, codes

    assert assess(100.0, 100.0, male=False).alerts == []
    girl_17 = assess(200.0, 204.0, male=False)  # past the girls' table and near mature
    assert codes(girl_17.alerts) == [Code.REFERENCE_EXTRAPOLATED, Code.NEAR_MATURE]
    assert [a.message for a in girl_17.alerts] == girl_17.notes[:2]  # the same sentences the notes print
    assert codes(assess(1.0, 2.0, male=True).alerts) == [Code.REFERENCE_EXTRAPOLATED]  # below the table
    assert codes(assess(200.0, 192.0, male=False).alerts) == [Code.NEAR_MATURE]
