"""Reports of a prediction: a one-page PDF per image and a CSV for a batch.

The PDF (fpdf2, drawn with its own primitives, no browser or plotting backend) holds the
image thumbnail, the Grad-CAM overlay, the numbers, a bone age vs chronological age chart
with the Greulich-Pyle reference, the model run and version, the reference and its
limits, and the research-use disclaimer. It holds no identifiers: the DICOM's name/ID
tags are never read, the file name is left out unless asked for (names of files often
carry patient names), and a patient label appears only when the user typed one.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from fpdf import FPDF
from PIL import Image

from h2a import RESEARCH_NOTE, __version__
from h2a.run import atomic_write_bytes
from h2a.exports import csv_bytes, write_csv
from h2a.predict.alerts import codes, flagged, messages
from h2a.predict.clinical import (
    REFERENCE_LIMITS,
    REFERENCE_STATEMENT,
    months_to_text,
    reference_band,
)
from h2a.inference.cam import overlay

__all__ = ["CSV_COLUMNS", "batch_csv", "pdf_report", "write_batch_csv", "write_report"]

DISCLAIMER = (
    "Research use only, not for clinical decisions. This estimate comes from a machine-learning model "
    "and has not been validated for diagnosis; a qualified reader must interpret the radiograph."
)

_UNICODE = {"\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
            "\u201d": '"', "\u2026": "...", "\u2265": ">=", "\u2264": "<=", "\u00d7": "x", "\u2248": "~"}


def _t(text: object) -> str:
    """Text the PDF core fonts (latin-1) can print."""
    s = str(text)
    for a, b in _UNICODE.items():
        s = s.replace(a, b)
    return s.encode("latin-1", "replace").decode("latin-1")


def _jpeg(arr: np.ndarray, side: int = 600) -> tuple[io.BytesIO, tuple[int, int]]:
    """A small JPEG of an image (fpdf2 embeds JPEG as is: a light, fast PDF)."""
    im = Image.fromarray(arr)
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    buf.seek(0)
    return buf, im.size


def _fmt(v: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


class _Report(FPDF):
    def footer(self) -> None:  # fpdf hook: drawn on every page
        self.set_y(-12)
        self.set_font("helvetica", "I", 7)
        self.set_text_color(90, 90, 90)
        self.cell(0, 5, _t(f"H2A {__version__} · generated {time.strftime('%Y-%m-%d %H:%M')} · {RESEARCH_NOTE}"),
                  align="C")


def clinical_rows(result, *, short: bool = False) -> list[tuple[str, str]]:
    """Sex and the Greulich-Pyle assessment as (label, value) rows: one wording for the
    page's table (``short`` units) and the PDF."""
    mo, yr = ("mo", "y") if short else ("months", "years")
    a = result.assessment
    rows = [("Sex", f"{result.sex} ({'from the DICOM header' if result.sex_source == 'dicom' else 'entered'})")]
    if a is None:
        return rows + [("Chronological age", "not given: bone age only, no SDS")]
    return rows + [
        ("Chronological age", f"{a.ca_months:.1f} {mo} ({months_to_text(a.ca_months)})"),
        ("Age from", str(result.chronological_age_source)),
        ("BA - CA", f"{a.ba_minus_ca_months:+.1f} {mo} ({a.ba_minus_ca_years:+.2f} {yr})"),
        ("GP mean at CA", f"{a.reference_mean_months:.1f} {mo}"),
        ("GP SD at CA", f"{a.reference_sd_months:.2f} {mo}"),
        ("SDS", f"{a.sds:+.2f}"),
        ("Classification", a.classification),
    ]


def coverage_text(result, short: bool = False) -> str:
    """How often the run's intervals covered the true bone age, and where that was measured."""
    cov = getattr(result, "measured_coverage", None)
    if cov:
        if not short:
            return cov["text"]
        source = str(cov.get("source") or "")
        where = ("held-out" if source == "held-out evaluation" else
                 source.replace(" cross-validation", " (cross-validated)") if source.startswith("site ") else
                 "validation (cross-fit)")
        return f"{100 * cov['coverage']:.1f}% of {cov['n']:,} {where} images"
    if result.interval_source == "conformal":
        return "not measured for this combination of runs"
    return "never measured (old interval rule)"


def site_text(result) -> str:
    """Which site profile shaped the answer and why: one wording for the page, the PDF and the CSV."""
    site = getattr(result, "site", None)
    parts = getattr(result, "site_parts", None) or []
    reason = getattr(result, "site_reason", None) or ""
    if not site:
        return f"none ({reason})" if reason else "none"
    return f"{site} ({', '.join(parts) or 'no part kept'}): {reason}"


def interval_rows(result, *, short: bool = False) -> list[tuple[str, str]]:
    """The interval, how it was made and how often such intervals covered the truth: one
    wording for the page's table and the PDF (``short``: the method's name only; the
    PDF's model section and the page's caption give the full sentence)."""
    lo, hi = result.interval_months
    level = getattr(result, "interval_level", None) or 0.95
    method = str(getattr(result, "interval_method", None) or result.interval_source)
    if short:
        method = (f"split-conformal {100 * level:g}% (by age band and sex)" if result.interval_source == "conformal"
                  else "old rule: 1.96 x max(TTA SD, validation RMSE)")
    return [
        (f"{100 * level:g}% interval", f"{lo:.1f} - {hi:.1f} months"),
        ("Interval method", method),
        ("Measured coverage", coverage_text(result, short)),
    ]


def _numbers(result) -> list[tuple[str, str]]:
    mark = "  FLAGGED: see the warnings below" if flagged(result.warnings) else ""
    return [
        ("Bone age", f"{result.bone_age_months:.1f} months ({months_to_text(result.bone_age_months)}){mark}"),
    ] + interval_rows(result, short=True) + clinical_rows(result)


def _chart_axes(pdf: FPDF, x: float, y: float, w: float, h: float, xmax: float, ymax: float, px, py) -> None:
    """Frame, ticks every 2 years and the axis titles."""
    pdf.set_draw_color(120, 120, 120)
    pdf.set_line_width(0.2)
    pdf.rect(x, y, w, h)
    pdf.set_font("helvetica", "", 6.5)
    pdf.set_text_color(60, 60, 60)
    for v in range(0, int(xmax) + 1, 2):
        pdf.line(px(v), y + h, px(v), y + h + 1)
        pdf.text(px(v) - 1, y + h + 3.5, str(v))
    for v in range(0, int(ymax) + 1, 2):
        pdf.line(x - 1, py(v), x, py(v))
        pdf.text(x - 5, py(v) + 1, str(v))
    pdf.set_font("helvetica", "", 7)
    pdf.text(x + w / 2 - 18, y + h + 7, "chronological age (years)")
    with pdf.rotation(90, x - 7, y + h / 2 + 12):
        pdf.text(x - 7, y + h / 2 + 12, "bone age (years)")


def _chart_legend(pdf: FPDF, x: float, y: float, male: bool) -> None:
    """The key in the chart's top-left corner, drawn with the same styles as the curves."""
    lx, ly = x + 3, y + 4
    pdf.set_font("helvetica", "", 6.5)
    pdf.set_text_color(30, 30, 30)
    with pdf.local_context(fill_opacity=0.35):
        pdf.set_fill_color(120, 190, 120)
        pdf.rect(lx, ly - 2, 4, 2.5, style="F")
    pdf.text(lx + 5, ly, _t(f"normal limits: CA +/- 2 SD ({'boys' if male else 'girls'}, GP SDs)"))
    pdf.set_draw_color(30, 110, 30)
    pdf.set_line_width(0.4)
    pdf.line(lx, ly + 3, lx + 4, ly + 3)
    pdf.text(lx + 5, ly + 4, "GP mean skeletal age")
    pdf.set_draw_color(150, 150, 150)
    pdf.set_line_width(0.2)
    pdf.set_dash_pattern(dash=1, gap=1)
    pdf.line(lx, ly + 7, lx + 4, ly + 7)
    pdf.set_dash_pattern()
    pdf.text(lx + 5, ly + 8, "bone age = chronological age")
    pdf.set_fill_color(200, 30, 30)
    pdf.ellipse(lx + 1, ly + 10, 2, 2, style="F")
    pdf.text(lx + 5, ly + 12, "this image (bar: 95% interval)")
    pdf.set_draw_color(0, 0, 0)
    pdf.set_text_color(0, 0, 0)


def _chart(pdf: FPDF, result, x: float, y: float, w: float, h: float) -> None:
    """BA vs CA (years): CA +/- 2 SD band, GP mean skeletal age, BA = CA, the patient."""
    a = result.assessment
    male = result.sex == "male"
    band = reference_band(male)
    ca_p = a.ca_months / 12
    ba_p = result.bone_age_months / 12
    lo_p, hi_p = (v / 12 for v in result.interval_months)
    xmax = max(19.0, ca_p + 1)
    ymax = max(21.0, hi_p + 1, ba_p + 1)
    px = lambda v: x + w * v / xmax
    py = lambda v: y + h - h * min(max(v, 0.0), ymax) / ymax

    _chart_axes(pdf, x, y, w, h, xmax, ymax, px, py)
    ca_y = band["ca"] / 12
    upper = [(px(c), py(v / 12)) for c, v in zip(ca_y, band["high"])]
    lower = [(px(c), py(v / 12)) for c, v in zip(ca_y, band["low"])]
    with pdf.local_context(fill_opacity=0.35):
        pdf.set_fill_color(120, 190, 120)
        pdf.polygon(upper + lower[::-1], style="F")
    pdf.set_draw_color(150, 150, 150)
    pdf.set_dash_pattern(dash=1, gap=1)
    pdf.line(px(0), py(0), px(min(xmax, ymax)), py(min(xmax, ymax)))
    pdf.set_dash_pattern()
    pdf.set_draw_color(30, 110, 30)
    pdf.set_line_width(0.4)
    pdf.polyline([(px(c), py(v / 12)) for c, v in zip(ca_y, band["mean"])])
    # the patient: interval bar and point
    pdf.set_draw_color(200, 30, 30)
    pdf.set_line_width(0.5)
    pdf.line(px(ca_p), py(lo_p), px(ca_p), py(hi_p))
    pdf.set_fill_color(200, 30, 30)
    pdf.ellipse(px(ca_p) - 1.2, py(ba_p) - 1.2, 2.4, 2.4, style="F")
    pdf.set_line_width(0.2)
    _chart_legend(pdf, x, y, male)


def _header(pdf: FPDF, result, patient_label: str | None, include_file_name: bool) -> None:
    """Title, the research-use line and what identifies the image (only what the user typed)."""
    pdf.set_font("helvetica", "B", 16)
    pdf.cell(0, 8, "H2A bone-age estimate", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "B", 9)
    pdf.set_text_color(180, 20, 20)
    pdf.cell(0, 5, "RESEARCH USE ONLY - NOT FOR CLINICAL DECISIONS", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("helvetica", "", 8)
    ident = []
    if patient_label and patient_label.strip():
        ident.append(f"Patient (as entered): {patient_label.strip()}")
    if include_file_name:
        ident.append(f"File: {Path(result.file).name}")
    w, h = result.original_size or (0, 0)
    ident.append(f"Image {w} x {h} px, SHA-256 {(result.image_sha256 or '')[:16]}")
    pdf.cell(0, 4.5, _t(" · ".join(ident)), new_x="LMARGIN", new_y="NEXT")


def _images_and_numbers(pdf: FPDF, result, alpha: float) -> float:
    """The radiograph and its Grad-CAM (left), the numbers (right); returns the y below both."""
    top = pdf.get_y() + 2
    img_w, img_h = 52.0, 70.0
    thumb, (iw, ih) = _jpeg(result.image)
    scale = min(img_w / iw, img_h / ih)
    dw, dh = iw * scale, ih * scale
    pdf.image(thumb, x=12, y=top, w=dw, h=dh)
    if result.cam is not None:
        pdf.image(_jpeg(overlay(result.image, result.cam, alpha))[0], x=12 + img_w + 3, y=top, w=dw, h=dh)
    pdf.set_font("helvetica", "", 7)
    pdf.text(12, top + dh + 3.5, "radiograph")
    if result.cam is not None:
        pdf.text(12 + img_w + 3, top + dh + 3.5, "Grad-CAM: regions pushing the estimate older")

    nx = 12 + 2 * img_w + 8
    pdf.set_xy(nx, top)
    for label, value in _numbers(result):
        bold = label in ("Bone age", "SDS", "Classification")
        pdf.set_font("helvetica", "B", 8.5)
        pdf.set_x(nx)
        pdf.cell(29, 5, _t(label))
        pdf.set_font("helvetica", "B" if bold else "", 8.5)
        pdf.multi_cell(210 - 12 - nx - 29, 5, _t(value), align="L", new_x="LMARGIN", new_y="NEXT")
    return max(top + dh + 6, pdf.get_y() + 2)


def _warnings(pdf: FPDF, result, y: float) -> float:
    """Every coded alert's message, most important first as the predictor orders them."""
    if not result.warnings:
        return y
    pdf.set_xy(12, y)
    pdf.set_font("helvetica", "B", 8.5)
    pdf.set_text_color(180, 90, 0)
    pdf.cell(0, 5, "Warnings", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 7.5)
    for alert in result.warnings:  # coded alerts: the reader gets the message, every one
        pdf.multi_cell(0, 3.8, _t(f"- {alert.message}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    return pdf.get_y() + 2


def _context(pdf: FPDF, result, y: float) -> float:
    """The BA vs CA chart, or why there is none; returns the y below it."""
    if result.assessment is not None:
        ch = min(75.0, 297 - 70 - y)
        if ch > 35:
            _chart(pdf, result, 22, y + 2, 120, ch)
            return y + ch + 12
        return y
    pdf.set_xy(12, y)
    pdf.set_font("helvetica", "I", 8)
    pdf.multi_cell(0, 4, "No chronological age was given, so there is no comparison with the reference "
                         "(enter date of birth and exam date, or the age at the exam).",
                   new_x="LMARGIN", new_y="NEXT")
    return pdf.get_y() + 2


def _model_and_reference(pdf: FPDF, result, y: float) -> None:
    """Which run(s) answered and how, the reference and its limits, the disclaimer."""
    pdf.set_xy(12, y)
    pdf.set_font("helvetica", "B", 8.5)
    pdf.cell(0, 4.5, "Model", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 7.5)
    for m in result.model_info:
        line = (f"run {m['run']} ({m['arch']}, {m['image_size']} px), validation MAE "
                f"{_fmt(m.get('val_mae'), '.2f')} / RMSE {_fmt(m.get('val_rmse'), '.2f')} months on "
                f"{m.get('n_val') or '?'} images of {m.get('dataset')}"
                f"{' (SYNTHETIC demo data)' if m.get('synthetic') else ''}; trained {m.get('created') or '?'} "
                f"with H2A {m.get('h2a_version')}")
        pdf.multi_cell(0, 3.6, _t(line), new_x="LMARGIN", new_y="NEXT")
    if result.interval_source == "conformal":
        how = ("interval = estimate +/- a half-width learnt on the run's validation images (split-conformal: "
               "the residual quantile of the image's predicted-age band and sex, so it covers the true bone "
               "age of such images at the stated rate)")
    else:
        how = (f"interval = estimate +/- 1.96 x max(TTA SD {_fmt(result.tta_sd_months, '.2f')}, validation RMSE "
               f"{_fmt(result.rmse_months, '.2f')}) months (old rule, coverage never measured)")
    pdf.multi_cell(0, 3.6, _t(
        f"Estimate = mean of {result.tta} test-time augmented copies"
        f"{' averaged over the ensemble' if len(result.model_info) > 1 else ''}; {how}."),
        new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(0, 3.6, _t(f"Site profile: {site_text(result)}."), new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(0, 3.6, _t(f"Interval method: {getattr(result, 'interval_method', None) or '-'}. "
                              f"Measured coverage: {coverage_text(result)}."), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font("helvetica", "B", 8.5)
    pdf.cell(0, 4.5, "Reference", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 7.5)
    pdf.multi_cell(0, 3.6, _t(REFERENCE_STATEMENT), new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(0, 3.6, _t(REFERENCE_LIMITS + " Near the end of the atlas (18 y girls, 19 y boys) the "
                              "skeleton is near mature and the SDS means less."), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font("helvetica", "B", 8)
    pdf.set_text_color(180, 20, 20)
    pdf.multi_cell(0, 4, _t(DISCLAIMER), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)


def pdf_report(result, *, patient_label: str | None = None, alpha: float = 0.4,
               include_file_name: bool = False) -> bytes:
    """One A4 page for a successful ``PredictionResult``; returns the PDF bytes."""
    if not result.ok:
        raise ValueError(f"no report for a failed prediction: {result.error}")
    pdf = _Report(format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margins(12, 10, 12)
    pdf.add_page()
    pdf.set_title("H2A bone-age estimate")
    pdf.set_creator(f"H2A {__version__}")
    _header(pdf, result, patient_label, include_file_name)
    y = _images_and_numbers(pdf, result, alpha)
    y = _warnings(pdf, result, y)
    y = _context(pdf, result, y)
    _model_and_reference(pdf, result, y)
    return bytes(pdf.output())


def write_report(result, path: str | Path, **kwargs) -> Path:
    """Write ``pdf_report(result)`` to ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, pdf_report(result, **kwargs))
    return path


CSV_COLUMNS = [
    "file", "sex", "sex_source", "chronological_age_months", "chronological_age_source", "bone_age_months",
    "bone_age_years", "interval_low_months", "interval_high_months", "interval_method", "measured_coverage",
    "ba_minus_ca_months", "sds",
    "classification", "warnings", "warning_codes", "model_run", "site", "error",
]


def _row(r) -> dict:
    d = r.to_dict() if hasattr(r, "to_dict") else dict(r)
    interval = d.get("interval_months") or [None, None]
    out = {k: d.get(k) for k in CSV_COLUMNS}
    out["interval_low_months"], out["interval_high_months"] = interval[0], interval[1]
    cov = d.get("measured_coverage")
    out["measured_coverage"] = cov.get("text") if isinstance(cov, dict) else cov
    out["site"] = d.get("site") or ""
    alerts = d.get("warnings") or []
    out["warnings"] = "; ".join(messages(alerts))  # for people
    out["warning_codes"] = ";".join(codes(alerts))  # for filters and scripts: stable, unlike the wording
    return out


def batch_csv(results: Iterable) -> bytes:
    """One CSV row per file (PredictionResult or its dict), failures with their error; file
    names and messages escaped against formula injection (``h2a.exports``)."""
    return csv_bytes((_row(r) for r in results), CSV_COLUMNS)


def write_batch_csv(path: str | Path, results: Iterable) -> Path:
    """``batch_csv(results)`` written to ``path`` (``h2a predict --csv``): the page's table."""
    return write_csv(path, (_row(r) for r in results), CSV_COLUMNS)
