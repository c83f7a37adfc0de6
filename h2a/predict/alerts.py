"""Prediction warnings as data: a stable ``code`` for programs, a ``message`` for people.

The page, the PDF, the batch CSV and ``h2a predict --json`` all carry the same
``Alert`` objects (``{"code": ..., "message": ...}``), so anything that reacts to a
warning (the page's OOD column, a script filtering a batch) tests the code and never
the wording, which stays free to improve.

The module is called ``alerts`` rather than ``warnings``: a ``warnings.py`` next to the
code that does ``import warnings`` invites mix-ups with the standard library module
(and shadows it when a script is run from this folder), and ``flags`` reads as CLI flags.

Core module: no streamlit, no heavy imports (``clinical`` and ``checks`` use it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["FLAGGING", "Alert", "Code", "codes", "flagged", "messages"]


class Code(StrEnum):
    """Every warning a prediction can carry; the values are the JSON/CSV codes."""

    # the image itself (h2a.predict.checks; inverted / rotated via h2a.data.orientation)
    UNIFORM = "uniform"  # nearly uniform: no visible structure
    NOISE = "noise"  # neighbouring pixels uncorrelated
    ASPECT = "aspect"  # extreme aspect ratio
    COLOUR = "colour"  # a colour photograph or screenshot
    BODY_PART = "body_part"  # DICOM BodyPartExamined is not a hand
    MODALITY = "modality"  # DICOM modality is not a plain radiograph
    INVERTED = "inverted"  # dark bones on a bright background (MONOCHROME mix-up): corrected or flagged
    ROTATED = "rotated"  # turned by 90/180/270 degrees: corrected or flagged
    # the model's view of it (h2a.predict.ood, h2a.predict.predictor)
    OUT_OF_DISTRIBUTION = "out_of_distribution"  # unlike the run's training images
    OOD_UNCHECKED = "ood_unchecked"  # no training images to compare with
    SYNTHETIC_MODEL = "synthetic_model"  # a run trained on synthetic demo images
    NEGATIVE_BONE_AGE = "negative_bone_age"  # the model said < 0, shown as 0
    BEYOND_TRAINING_RANGE = "beyond_training_range"  # above the RSNA data's 19 y
    # the inputs (h2a.predict.inputs)
    SEX_MISMATCH = "sex_mismatch"  # the given sex differs from the DICOM's
    NO_CHRONOLOGICAL_AGE = "no_chronological_age"  # dates incomplete or unusable: no SDS
    # the clinical context (h2a.predict.clinical)
    REFERENCE_EXTRAPOLATED = "reference_extrapolated"  # CA outside the GP table: end row used
    NEAR_MATURE = "near_mature"  # BA within two years of the atlas end
    # the batch (h2a.predict.batch)
    REPORT_FAILED = "report_failed"  # the PDF could not be written


# Alerts that say the estimate itself may be meaningless: the image is not a usable hand
# radiograph, not like the training images, or was found the wrong way round (even when
# corrected, the reader should look at the corrected image). A result carrying one is
# "flagged": it keeps its number, marked as such (JSON, page, PDF, bench_ood's counts).
FLAGGING = frozenset({Code.OUT_OF_DISTRIBUTION, Code.UNIFORM, Code.NOISE, Code.ASPECT, Code.COLOUR,
                      Code.BODY_PART, Code.MODALITY, Code.INVERTED, Code.ROTATED})


@dataclass(frozen=True)
class Alert:
    """One warning about one prediction."""

    code: Code
    message: str

    def to_dict(self) -> dict[str, str]:
        """The JSON form (``predict --json``, ``PredictionResult.to_dict``)."""
        return {"code": str(self.code), "message": self.message}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> Alert:
        """Back from the JSON form (the CSV writer accepts either)."""
        return cls(Code(d["code"]), str(d["message"]))

    def __str__(self) -> str:  # printed as the sentence people read
        return self.message


def _code(a: Alert | Mapping[str, str]) -> str:
    return str(a.code) if isinstance(a, Alert) else str(a["code"])


def codes(alerts: Iterable[Alert | Mapping[str, str]]) -> list[str]:
    """The codes of alerts given as objects or their dicts, in order."""
    return [_code(a) for a in alerts]


def messages(alerts: Iterable[Alert | Mapping[str, str]]) -> list[str]:
    """The messages of alerts given as objects or their dicts, in order."""
    return [a.message if isinstance(a, Alert) else str(a["message"]) for a in alerts]


def flagged(alerts: Iterable[Alert | Mapping[str, str]]) -> bool:
    """True when any alert is in FLAGGING (objects or their dicts)."""
    return any(_code(a) in FLAGGING for a in alerts)
