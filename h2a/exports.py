"""CSV that a spreadsheet opens as data, never as formulas (OWASP "CSV Injection").

File names, ids and upload names end up in H2A's CSVs, and a spreadsheet runs a cell such
as ``=HYPERLINK(...)``, ``@SUM(...)`` or ``+1+1`` as a formula. Every CSV H2A writes (the
page downloads, ``h2a predict --csv``, ``h2a cluster --out``) goes through ``csv_bytes``
or ``write_csv``, so the rule lives here once.

The rule follows OWASP's CSV Injection page (and ASVS 1.2.10, which adds NUL):

* a text cell whose first character is ``= + - @``, tab, carriage return or NUL gets a
  leading single quote, which spreadsheets take as "this is text";
* every text cell is wrapped in double quotes with embedded quotes doubled (RFC 4180), so
  a separator inside a cell (a ``;`` where the spreadsheet's locale splits on ``;``)
  cannot start a new, unescaped cell;
* numbers are written as plain numbers, unquoted and unescaped. OWASP's list includes
  ``-`` because ``-2+3`` is a formula, but a value that *is* a number in Python (int,
  float, numpy number, bool) is written as a numeric literal such as ``-3.2``, which a
  spreadsheet can only read as that constant. Escaping it would turn a numeric column
  (SDS, BA - CA, UMAP coordinates) into text that no longer sorts or plots. Text that
  merely looks like a number (an id ``"-5"``) is escaped like any other text: telling
  ``-3.2`` from ``-2+3`` would mean parsing as each spreadsheet does;
* missing values (None, NaN) are empty cells.

Core module: no streamlit.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Number
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FORMULA_START", "csv_bytes", "csv_text", "safe_cell", "safe_frame", "write_csv"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\0")  # OWASP's list, plus NUL from ASVS 1.2.10

Rows = pd.DataFrame | Iterable[Mapping[str, Any]]


def safe_cell(value: Any) -> str | int | float | bool | None:
    """A cell as the CSV writer should see it: numbers as numbers, text escaped, None for missing."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, Number) and not isinstance(value, complex):
        return None if isinstance(value, float) and math.isnan(value) else value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with its text cells escaped as in the CSV (numbers untouched), for
    tables of untrusted text a page shows: Streamlit's table toolbar has its own "Download as
    CSV", which escapes nothing."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(lambda v: safe_cell(v) if isinstance(v, str) else v)
    return out


def _records(data: Rows, columns: Sequence[str] | None) -> tuple[list[str], Iterable[Sequence[Any]]]:
    """(header, rows of values in header order) from a DataFrame or from dicts."""
    if isinstance(data, pd.DataFrame):
        cols = [str(c) for c in (columns if columns is not None else data.columns)]
        frame = data[list(columns)] if columns is not None else data
        return cols, frame.itertuples(index=False, name=None)
    if columns is None:
        raise ValueError("columns are needed to write dicts as CSV")
    cols = list(columns)
    return cols, ([row.get(c) for c in cols] for row in data)


def csv_text(data: Rows, columns: Sequence[str] | None = None) -> str:
    """The CSV text of a DataFrame (all its columns, no index) or of dicts (``columns`` in order)."""
    header, rows = _records(data, columns)
    buf = io.StringIO()
    # The header holds H2A's own column names: escaped, quoted only when needed, so it reads
    # as the plain "file,sex,..." line scripts expect.
    csv.writer(buf, lineterminator="\n").writerow([safe_cell(c) for c in header])
    # QUOTE_NONNUMERIC quotes every str (and the empty cell of a missing value), never a number.
    writer = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
    return buf.getvalue()


def csv_bytes(data: Rows, columns: Sequence[str] | None = None) -> bytes:
    """``csv_text`` as UTF-8 bytes: what a download button or a file gets."""
    return csv_text(data, columns).encode("utf-8")


def write_csv(path: str | Path, data: Rows, columns: Sequence[str] | None = None) -> Path:
    """Write ``csv_bytes(data)`` to ``path`` (a user's output file: created with the usual
    permissions, its folder made if missing); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv_bytes(data, columns))
    return path
