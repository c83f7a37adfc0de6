"""Many files at once (``h2a predict``): one ``Predictor``, one JSON-ready record per file.

A bad file never stops the batch: it gets an ``error`` in its record. Only problems with
the call itself (no model, a malformed date, a bad ``tta``) raise, before any file is read.

Core module: no streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from h2a.predict.alerts import Alert, Code
from h2a.predict.inputs import check_call_inputs
from h2a.predict.predictor import AUTO_SITE, DEFAULT_TTA, Predictor
from h2a.predict.report import write_report
from h2a.progress import ProgressFn, report

__all__ = ["predict_files", "report_path"]


def report_path(report_dir: Path, file: str, used: set[str]) -> Path:
    """A PDF path in ``report_dir`` named after ``file`` (safe characters, unique within ``used``)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(file).stem) or "image"
    name, k = stem, 2
    while name in used:
        name, k = f"{stem}-{k}", k + 1
    used.add(name)
    return report_dir / f"{name}.pdf"


def predict_files(model: str | Path | Sequence[str | Path] | None, files: Sequence[str | Path], *,
                  sex: Any = None, dob: Any = None, exam_date: Any = None, age_months: float | None = None,
                  tta: int = DEFAULT_TTA, cam: bool = False, report_dir: str | Path | None = None,
                  progress: ProgressFn | None = None, site: str | None = AUTO_SITE,
                  backend: str = "torch") -> list[dict]:
    """Bone age for each file, as JSON-ready dicts (one per file, failures included).

    ``model`` is a run name/path, a list of them (an ensemble) or None for the best
    validated bone-age run. Raises NoModelError / FileNotFoundError / ValueError only for
    problems with the call itself (no model, a bad date); a bad file gets an ``error``.
    Each record's ``warnings`` are ``{"code", "message"}`` dicts (``h2a.predict.alerts``).
    ``site``: 'auto' (a site the run declares for large uploads applies to those), 'none'
    or a site name (``h2a adapt``); each record names the site applied and why.
    """
    check_call_inputs(sex, dob, exam_date, age_months, tta)
    predictor = Predictor(model, site=site, backend=backend)
    out_dir = Path(report_dir) if report_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results: list[dict] = []
    for i, f in enumerate(files):
        res = predictor.predict_image(str(f), name=str(f), sex=sex, dob=dob, exam_date=exam_date,
                                      age_months=age_months, tta=tta, cam=cam or out_dir is not None)
        d = res.to_dict()
        if out_dir is not None and res.ok:
            try:
                d["report"] = str(write_report(res, report_path(out_dir, str(f), used)))
            except (OSError, ValueError, RuntimeError) as exc:
                d["warnings"].append(Alert(Code.REPORT_FAILED, f"the PDF report could not be written: {exc}").to_dict())
        results.append(d)
        report(progress, i + 1, len(files), "predicting")
    return results
