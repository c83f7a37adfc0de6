"""What a prediction needs besides pixels: sex, chronological age, DICOM header facts.

* **Sex** is never defaulted: a sex given by the caller wins, else the DICOM
  ``PatientSex`` (M/F), else that file fails with "sex is needed (...)" - bone age and
  its reference are sex-specific, and a guess would silently shift the SDS.
* **Chronological age** (CA): date of birth + exam date given, else an age in months
  given, else the DICOM dates (birth + study or acquisition date), else the DICOM
  ``PatientAge``; a given date of birth or exam date is completed from the DICOM when
  only one of them was typed. Without a CA the result has a bone age but no SDS.
* A CA outside 0-30 years (``h2a.predict.clinical.check_age_months``) is refused: typed
  (an age, or both dates) it fails the call or that file with a message saying so; from
  the DICOM header (or dates completed from it) it leaves the file without an SDS and
  says why, since the image itself can still be read.
* From a DICOM only the non-identifying facts ``read_header`` exposes are used.

Core module: no streamlit, no torch.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from h2a.data.imageio import ImageReadError, read_header
from h2a.predict.alerts import Alert, Code
from h2a.predict.clinical import check_age_months, chronological_age_months, parse_date

__all__ = [
    "SEX_NEEDED",
    "SexNeededError",
    "Source",
    "check_call_inputs",
    "header_facts",
    "normalize_sex",
    "resolve_age",
    "resolve_sex",
    "sex_word",
]

Source = str | Path | bytes | bytearray | memoryview  # a path or the file's bytes (an upload)

SEX_NEEDED = ("sex is needed (none was given and the file has no DICOM PatientSex M or F): "
              "bone age and its reference are sex-specific, so H2A never guesses it")

_TAG_SEX = {"M": True, "F": False}


class SexNeededError(ValueError):
    """Neither the caller nor the DICOM said the sex: that file is not predicted."""


def normalize_sex(value: Any) -> bool | None:
    """True = male, False = female, None = not given; ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if not text:
        return None
    if text in ("m", "male", "boy", "1"):
        return True
    if text in ("f", "female", "girl", "0"):
        return False
    raise ValueError(f"sex must be male or female, got {value!r}")


def sex_word(male: bool | None) -> str | None:
    """'male' / 'female' / None: the one spelling results, forms and reports use."""
    return None if male is None else ("male" if male else "female")


def resolve_sex(given: Any, dicom: dict | None) -> tuple[bool, str, list[Alert]]:
    """(male, source 'given'|'dicom', alerts); SexNeededError when neither has it."""
    alerts: list[Alert] = []
    tag = (dicom or {}).get("patient_sex")
    from_tag = _TAG_SEX.get(tag) if tag else None
    male = normalize_sex(given)
    if male is not None:
        if from_tag is not None and from_tag != male:
            alerts.append(Alert(Code.SEX_MISMATCH, f"the sex given ({sex_word(male)}) differs from the DICOM "
                                                   f"PatientSex ({tag}); the given sex was used"))
        return male, "given", alerts
    if from_tag is not None:
        return from_tag, "dicom", alerts
    raise SexNeededError(SEX_NEEDED)


def resolve_age(dob: Any = None, exam_date: Any = None, age_months: float | None = None,
                dicom: dict | None = None) -> tuple[float | None, str | None, list[Alert]]:
    """(CA in months or None, where it came from, alerts). See the module docstring."""
    d = dicom or {}
    born, seen = parse_date(dob), parse_date(exam_date)
    if born is not None and seen is not None:
        return chronological_age_months(born, seen), "date of birth and exam date given", []
    if age_months is not None:
        return check_age_months(age_months, "the age at exam"), "age at exam given", []
    tag_born = parse_date(d.get("birth_date"))
    tag_seen = parse_date(d.get("study_date") or d.get("acquisition_date"))
    b, s = born or tag_born, seen or tag_seen
    if b is not None and s is not None:
        source = "DICOM dates" if (born is None and seen is None) else "dates given, completed from the DICOM"
        try:
            return chronological_age_months(b, s), source, []
        except ValueError as exc:
            return None, None, [Alert(Code.NO_CHRONOLOGICAL_AGE, f"no chronological age: {exc}")]
    if d.get("age_months") is not None:
        try:
            ca = check_age_months(d["age_months"], "the DICOM PatientAge")
        except ValueError as exc:
            return None, None, [Alert(Code.NO_CHRONOLOGICAL_AGE, f"no chronological age: {exc}")]
        return ca, f"DICOM PatientAge ({d.get('patient_age')})", []
    if born is not None or seen is not None:
        return None, None, [Alert(Code.NO_CHRONOLOGICAL_AGE, "only one of date of birth / exam date is known: "
                                                             "no chronological age, so no SDS")]
    return None, None, []


def header_facts(source: Source, name: str | None = None) -> dict:
    """What the form can prefill from a file: sex ('male'/'female'/None), dates, age.

    Non-identifying facts only (``read_header``'s ``dicom`` dict); {} for non-DICOM files
    and for files whose header cannot be read (the prediction reports that error).
    """
    try:
        info = read_header(source, name)
    except ImageReadError:
        return {}
    d = info.dicom
    if not d:
        return {}
    return {
        "sex": sex_word(_TAG_SEX.get(d.get("patient_sex") or "")),
        "patient_sex": d.get("patient_sex"),
        "dob": d.get("birth_date"),
        "exam_date": d.get("study_date") or d.get("acquisition_date"),
        "age_months": d.get("age_months"),
        "patient_age": d.get("patient_age"),
    }


def check_call_inputs(sex: Any, dob: Any, exam_date: Any, age_months: float | None, tta: int) -> None:
    """ValueError for inputs that are wrong for every file of a batch (checked once, up front),
    so a typo in a date fails the command instead of every file."""
    normalize_sex(sex)
    born, seen = parse_date(dob), parse_date(exam_date)
    if born is not None and seen is not None:
        chronological_age_months(born, seen)
    if born is not None and born > date.today():
        raise ValueError(f"the date of birth {born.isoformat()} is in the future")
    if age_months is not None:
        check_age_months(age_months, "the age at exam")
    if int(tta) < 1:
        raise ValueError(f"--tta must be at least 1 (1 = no augmentation), got {tta}")


# ---------------------------------------------------------------- what a form entered

def entered(value: Any, tag_value: Any) -> Any:
    """What the user entered, or None when it is the DICOM's own value: the result then says
    'from the DICOM' rather than 'given'."""
    if value is None or (tag_value is not None and value == tag_value):
        return None
    return value


def _missing(value: Any) -> bool:
    """None, NaN, NaT or NA: a cell the user left empty."""
    return value is None or str(value) in ("NaT", "nan", "<NA>", "")


def request_row(facts: dict, sex: Any, dob: Any, exam: Any, age: Any) -> dict:
    """One file's request from a form (the Predict page): each value that differs from the
    file's DICOM header, else None."""
    return {"sex": entered(sex, facts.get("sex")),
            "dob": entered(None if _missing(dob) else parse_date(dob), parse_date(facts.get("dob"))),
            "exam": entered(None if _missing(exam) else parse_date(exam), parse_date(facts.get("exam_date"))),
            "age": entered(None if _missing(age) else float(age), facts.get("age_months"))}
