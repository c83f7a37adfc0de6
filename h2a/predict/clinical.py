"""Clinical context for a bone-age estimate: Greulich-Pyle reference, SDS, classification.

Bone age (BA) is read against chronological age (CA). The reference is the table of
mean skeletal age and its standard deviation by chronological age from the Brush
Foundation Study, as printed with the Greulich & Pyle atlas (``../shared/CLINICAL.md``):

* ``SDS = (BA - CA) / SD(CA, sex)``, with the SD interpolated linearly between rows;
  outside the table the nearest row is used and a note says so (the girls' table ends
  at 16 years, the boys' at 17, both start at 3 months);
* within +/-2 SD: within normal limits; below -2 SD: delayed; above +2 SD: advanced
  (a value of exactly +/-2 counts as within normal limits);
* a BA within two years of the end of the atlas (18 y girls, 19 y boys) means a
  near-mature skeleton, where the estimate and the SDS mean less;
* a chronological age outside 0-30 years (``MAX_AGE_YEARS``) is refused
  (``check_age_months``): it is a typo or a wrong date (``--age-months 100000``, a birth
  year 1800), not a child, and read against the table it would become "delayed" with an
  SDS in the thousands.

The two caveats (reference row extrapolated, near-mature skeleton) are also coded
alerts (``Assessment.alerts``), so a prediction carries them as warnings without
anyone matching on the notes' wording.

Pure functions, no streamlit, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import numpy as np

from h2a import RESEARCH_NOTE
from h2a.predict.alerts import Alert, Code

__all__ = [
    "GP_TABLE",
    "MAX_AGE_YEARS",
    "REFERENCE_LIMITS",
    "REFERENCE_NAME",
    "REFERENCE_STATEMENT",
    "Assessment",
    "assess",
    "check_age_months",
    "chronological_age_months",
    "classify",
    "gp_reference",
    "gp_rows",
    "months_to_text",
    "parse_date",
    "reference_band",
]

# CA (years), boys mean BA, boys SD, girls mean BA, girls SD (months). Brush Foundation
# Study, from the Greulich & Pyle atlas tables (CLINICAL.md); the girls' table ends at 16 y.
GP_TABLE: tuple[tuple[float, float, float, float | None, float | None], ...] = (
    (0.25, 3.01, 0.69, 3.02, 0.72),
    (0.5, 6.09, 1.13, 6.04, 1.16),
    (0.75, 9.56, 1.43, 9.05, 1.36),
    (1, 12.74, 1.97, 12.04, 1.77),
    (1.5, 19.36, 3.52, 18.22, 3.49),
    (2, 25.97, 3.92, 24.16, 4.64),
    (2.5, 32.40, 4.52, 30.96, 5.37),
    (3, 38.21, 5.08, 36.63, 5.97),
    (3.5, 43.89, 5.40, 43.50, 7.48),
    (4, 49.04, 6.66, 50.14, 8.98),
    (4.5, 56.00, 8.36, 60.06, 10.73),
    (5, 62.43, 8.79, 66.21, 11.65),
    (6, 75.46, 9.17, 78.50, 10.23),
    (7, 88.20, 8.91, 89.30, 9.64),
    (8, 101.38, 9.10, 100.66, 10.23),
    (9, 113.90, 9.00, 113.86, 10.74),
    (10, 125.68, 9.79, 125.66, 11.73),
    (11, 137.32, 10.09, 137.86, 11.94),
    (12, 148.82, 10.38, 149.62, 10.24),
    (13, 158.39, 10.44, 162.28, 10.67),
    (14, 170.02, 10.72, 174.25, 11.30),
    (15, 182.72, 11.32, 183.62, 9.23),
    (16, 195.32, 12.86, 189.44, 7.31),
    (17, 206.21, 13.05, None, None),
)

REFERENCE_NAME = "Greulich & Pyle atlas, Brush Foundation Study standard deviations"
REFERENCE_STATEMENT = (
    "SDS = (bone age - chronological age) / SD of skeletal age at that chronological age and sex, "
    f"from the {REFERENCE_NAME} (SD interpolated linearly between table rows). "
    "Within +/-2 SD: within normal limits; below -2 SD: delayed; above +2 SD: advanced."
)
REFERENCE_LIMITS = (
    "The Greulich-Pyle reference population is North American children of the 1930s; modern and "
    "non-white populations differ (e.g. Asian and Hispanic children over 12 read about a year ahead)."
)

# The atlas reaches 18 y (girls) and 19 y (boys); within two years of that the skeleton
# is near mature and both the estimate and the SDS mean less.
ATLAS_END_MONTHS = {True: 19 * 12.0, False: 18 * 12.0}
NEAR_MATURE_MARGIN_MONTHS = 24.0
SDS_LIMIT = 2.0
_EPS = 1e-9  # so an SDS of exactly +/-2 (up to rounding) stays "within normal limits"

CLASSES = ("delayed", "within normal limits", "advanced")


def gp_rows(male: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CA months, mean BA months, SD months) rows of the table for one sex."""
    rows = [(r[0] * 12.0, r[1], r[2]) if male else (r[0] * 12.0, r[3], r[4]) for r in GP_TABLE]
    rows = [r for r in rows if r[1] is not None]
    ca, mean, sd = (np.array(col, dtype=float) for col in zip(*rows))
    return ca, mean, sd


def _sex_word(male: bool) -> str:
    return "boys" if male else "girls"


def months_to_text(months: float) -> str:
    """126.5 -> '10 y 6.5 mo' (what a report prints next to the months)."""
    sign = "-" if months < 0 else ""
    m = abs(float(months))
    years = int(m // 12)
    rest = m - 12 * years
    return f"{sign}{years} y {rest:.1f} mo"


def gp_reference(ca_months: float, male: bool) -> tuple[float, float, str | None]:
    """(mean BA, SD, note) at chronological age ``ca_months`` for one sex.

    Linear interpolation of both mean and SD between rows; outside the table the nearest
    row is used and ``note`` says so (None inside the table).
    """
    ca = float(ca_months)
    if not np.isfinite(ca):
        raise ValueError(f"chronological age must be a number of months, got {ca_months!r}")
    rows_ca, rows_mean, rows_sd = gp_rows(male)
    lo, hi = rows_ca[0], rows_ca[-1]
    note = None
    if ca < lo:
        note = (f"chronological age {ca / 12:.2f} y is below the start of the {_sex_word(male)}' reference "
                f"table ({lo / 12:g} y): the {lo / 12:g} y row is used")
    elif ca > hi:
        note = (f"chronological age {ca / 12:.1f} y is past the end of the {_sex_word(male)}' reference "
                f"table ({hi / 12:g} y): the {hi / 12:g} y row is used")
    mean = float(np.interp(ca, rows_ca, rows_mean))  # np.interp holds the end values outside
    sd = float(np.interp(ca, rows_ca, rows_sd))
    return mean, sd, note


def reference_band(male: bool, k: float = SDS_LIMIT, step: float = 1.0) -> dict[str, np.ndarray]:
    """The reference for a chart: CA grid (months) with mean BA and mean +/- k SD.

    ``mean`` is the table's mean skeletal age; the band the SDS rule draws is around the
    identity line (BA = CA) with the same SD: ``low``/``high`` = CA -/+ k SD.
    """
    rows_ca, rows_mean, rows_sd = gp_rows(male)
    ca = np.arange(rows_ca[0], rows_ca[-1] + 1e-9, step)
    mean = np.interp(ca, rows_ca, rows_mean)
    sd = np.interp(ca, rows_ca, rows_sd)
    return {"ca": ca, "mean": mean, "sd": sd, "low": ca - k * sd, "high": ca + k * sd}


def parse_date(value: date | datetime | str | None) -> date | None:
    """A date from a date, a datetime or an ISO 'YYYY-MM-DD' (or DICOM 'YYYYMMDD') string."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if not text:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%Y.%m.%d"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"{value!r} is not a date (use YYYY-MM-DD)")


DAYS_PER_MONTH = 365.25 / 12

# Well past the atlas (19 y) and the table (17 y), so a young adult's film still gets an
# answer (with the caveats), yet far below any typo that would produce an absurd SDS.
MAX_AGE_YEARS = 30


def check_age_months(months: float, source: str = "the chronological age") -> float:
    """``months`` as a float when it is a plausible chronological age (0 to MAX_AGE_YEARS
    years); ValueError naming ``source`` otherwise."""
    try:
        age = float(months)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a number of months, got {months!r}") from None
    if not np.isfinite(age):
        raise ValueError(f"{source} must be a number of months, got {months!r}")
    if age < 0 or age > MAX_AGE_YEARS * 12:
        raise ValueError(f"{source} is {age:g} months ({age / 12:.1f} years): H2A accepts 0 to {MAX_AGE_YEARS} "
                         f"years (0-{MAX_AGE_YEARS * 12} months); check the age or the dates")
    return age


def chronological_age_months(dob: date | datetime | str, exam_date: date | datetime | str) -> float:
    """Age at the exam in months (days / 30.4375); ValueError when the exam precedes birth or
    comes more than MAX_AGE_YEARS years after it (a wrong date, not a child)."""
    born, seen = parse_date(dob), parse_date(exam_date)
    if born is None or seen is None:
        raise ValueError("both the date of birth and the exam date are needed")
    days = (seen - born).days
    if days < 0:
        raise ValueError(f"the exam date {seen.isoformat()} is before the date of birth {born.isoformat()}")
    months = days / DAYS_PER_MONTH
    if months > MAX_AGE_YEARS * 12:
        raise ValueError(f"the date of birth {born.isoformat()} is {months / 12:.1f} years before the exam date "
                         f"{seen.isoformat()}: H2A accepts ages of 0 to {MAX_AGE_YEARS} years; check the dates")
    return months


def classify(sds: float) -> str:
    """'delayed' below -2 SD, 'advanced' above +2 SD, else 'within normal limits'."""
    if sds < -SDS_LIMIT - _EPS:
        return "delayed"
    if sds > SDS_LIMIT + _EPS:
        return "advanced"
    return "within normal limits"


@dataclass
class Assessment:
    """Bone age read against chronological age with the Greulich-Pyle SDs."""

    ba_months: float
    ca_months: float
    male: bool
    ba_minus_ca_months: float
    ba_minus_ca_years: float
    reference_mean_months: float  # mean skeletal age at this CA (for the chart)
    reference_sd_months: float
    sds: float
    classification: str
    notes: list[str] = field(default_factory=list)
    out_of_table: bool = False
    near_mature: bool = False
    alerts: list[Alert] = field(default_factory=list)  # the caveats above as coded warnings
    reference: str = REFERENCE_STATEMENT
    reference_limits: str = REFERENCE_LIMITS
    research_note: str = RESEARCH_NOTE

    def to_dict(self) -> dict:
        return asdict(self)


def assess(ba_months: float, ca_months: float, male: bool) -> Assessment:
    """SDS, BA - CA and the classification for one exam, with the notes a report prints."""
    ba = float(ba_months)
    if not np.isfinite(ba):
        raise ValueError("bone age and chronological age must be numbers of months")
    ca = check_age_months(ca_months)
    mean, sd, note = gp_reference(ca, male)
    sds = (ba - ca) / sd
    alerts: list[Alert] = []
    if note:
        alerts.append(Alert(Code.REFERENCE_EXTRAPOLATED, note))
    end = ATLAS_END_MONTHS[bool(male)]
    near_mature = ba >= end - NEAR_MATURE_MARGIN_MONTHS
    if near_mature:
        alerts.append(Alert(Code.NEAR_MATURE, f"bone age {ba / 12:.1f} y is near the end of the atlas ({end / 12:g} y "
                                              f"for {_sex_word(male)}): a near-mature skeleton, where the estimate "
                                              "and the SDS mean less"))
    notes = [a.message for a in alerts]
    notes.append(f"Reference: {REFERENCE_NAME}. {REFERENCE_LIMITS}")
    notes.append(RESEARCH_NOTE)
    return Assessment(
        ba_months=ba, ca_months=ca, male=bool(male),
        ba_minus_ca_months=ba - ca, ba_minus_ca_years=(ba - ca) / 12.0,
        reference_mean_months=mean, reference_sd_months=sd, sds=float(sds),
        classification=classify(sds), notes=notes, out_of_table=note is not None,
        near_mature=near_mature, alerts=alerts,
    )
