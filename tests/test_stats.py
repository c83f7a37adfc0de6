"""The population page's tables come from the core (``h2a.analysis.stats``), so the gallery and
the preprocessing preview pick images by the same rule."""

from __future__ import annotations

import numpy as np
import pandas as pd

from h2a.analysis.stats import format_table, problem_kinds, select_images


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"id": ["a", "b", "c", "d"], "sex": ["female", "male", "male", "female"],
                         "boneage": [10.0, 200.0, np.nan, 120.0], "width": [100, np.nan, 120, 100],
                         "format": ["PNG", "PNG", "JPEG", "PNG"], "mode": ["L", "L", "L", "L"],
                         "bit_depth": [8, 8, 8, 16]})


def test_select_images_by_sex_and_age_keeps_rows_without_an_age():
    f = _frame()
    assert list(select_images(f, "male", (0, 100))["id"]) == ["c"]  # 200 months is out, no age is kept
    assert list(select_images(f, "female", (100, 240))["id"]) == ["d"]
    for both in ("all", "any", None):
        assert list(select_images(f, both, (0, 240))["id"]) == ["a", "b", "c", "d"]


def test_format_table_counts_readable_images_by_format():
    rows = {(r["format"], r["bit_depth"]): r["images"] for r in format_table(_frame()).to_dict("records")}
    assert rows == {("JPEG", 8): 1, ("PNG", 8): 1, ("PNG", 16): 1}  # b has no size: not readable


def test_problem_kinds_fold_numbers():
    probs = pd.DataFrame({"problem": ["row 12: bad age", "row 40: bad age", "x.png: unreadable"]})
    assert problem_kinds(probs).to_dict("records") == [{"kind": "row N", "count": 2}, {"kind": "x.png", "count": 1}]


def test_a_form_row_keeps_only_what_differs_from_the_dicom():
    from datetime import date

    from h2a.predict.inputs import request_row

    facts = {"sex": "female", "dob": "20140502", "exam_date": None, "age_months": None}
    row = request_row(facts, "female", pd.Timestamp("2014-05-02"), pd.NaT, np.nan)
    assert row == {"sex": None, "dob": None, "exam": None, "age": None}  # all from the header or empty
    row = request_row(facts, "male", date(2014, 5, 3), "2026-01-15", 140)
    assert row == {"sex": "male", "dob": date(2014, 5, 3), "exam": date(2026, 1, 15), "age": 140.0}
    assert request_row({}, None, None, None, None) == {"sex": None, "dob": None, "exam": None, "age": None}
