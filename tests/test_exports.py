"""Safe CSV exports (issue 17): no cell a spreadsheet would run as a formula, numbers kept as
numbers, every CSV writer going through ``h2a.exports``, and ``h2a predict --csv``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, run_cli

# OWASP's examples plus the ones the issue found: each must reach the spreadsheet as text.
HOSTILE = ['=HYPERLINK("http://x","y")', "@SUM(1)", "+1+1", "-2+3", "\t=1", "\r=1", "=cmd|' /C calc'!A0"]


def _cells(text: str) -> list[list[str]]:
    """The cells a spreadsheet's CSV import sees (quotes removed, as RFC 4180 says)."""
    return list(csv.reader(io.StringIO(text)))


def _formula_like(cell: str) -> bool:
    return cell[:1] in ("=", "+", "-", "@", "\t", "\r")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_hostile_text_is_escaped_and_numbers_stay_numbers() -> None:
    from h2a.exports import csv_text

    frame = pd.DataFrame({"id": HOSTILE, "sds": [-3.2, 1.5, -0.25, 0.0, np.nan, 2.0, -1e-3],
                          "n": np.arange(-3, 4), "male": [True, False] * 3 + [True]})
    text = csv_text(frame)
    rows = _cells(text)
    assert rows[0] == ["id", "sds", "n", "male"]
    for value, row in zip(HOSTILE, rows[1:]):
        assert row[0] == "'" + value  # the whole value kept, one quote in front
    # no cell of the file, as a spreadsheet splits it, starts a formula unless it is a plain number
    assert not [c for r in rows for c in r if _formula_like(c) and not _is_number(c)]
    # numbers are written as numbers (unquoted), negatives included; NaN is an empty cell
    assert "\n\"'-2+3\",0.0,0,False\n" in text and ",-3.2,-3,True\n" in text
    assert [r[1] for r in rows[1:]] == ["-3.2", "1.5", "-0.25", "0.0", "", "2.0", "-0.001"]
    back = pd.read_csv(io.StringIO(text))
    assert back["sds"].dtype == float and back["sds"].iloc[0] == -3.2 and np.isnan(back["sds"].iloc[4])
    assert back["n"].tolist() == list(range(-3, 4)) and back["male"].dtype == bool


def test_text_cells_are_quoted_so_a_semicolon_locale_cannot_split_out_a_formula() -> None:
    from h2a.exports import csv_text

    text = csv_text(pd.DataFrame({"file": ['a;=1+1', 'say "hi"', "plain"]}))
    assert text.splitlines() == ["file", '"a;=1+1"', '"say ""hi"""', '"plain"']
    # a spreadsheet splitting on ';' keeps the quoted cell whole
    assert [r for r in csv.reader(io.StringIO(text), delimiter=";")][1] == ["a;=1+1"]


def test_safe_cell_rules() -> None:
    from h2a.exports import safe_cell

    assert safe_cell(-3.2) == -3.2 and safe_cell(np.float32(-1.5)) == -1.5 and safe_cell(np.int64(-7)) == -7
    assert safe_cell(float("nan")) is None and safe_cell(None) is None and safe_cell(np.bool_(True)) is True
    assert safe_cell(pd.NA) is None and safe_cell(pd.NaT) is None
    assert safe_cell("-3.2") == "'-3.2"  # text that looks like a number is still text
    assert safe_cell("'=already") == "'=already" and safe_cell("") == "" and safe_cell("x=1") == "x=1"
    assert safe_cell(Path("=1.png")) == "'=1.png"


def test_safe_frame_escapes_text_for_tables_a_page_shows() -> None:
    from h2a.exports import safe_frame

    frame = pd.DataFrame({"file": ["@SUM(1).png", "ok.png", None], "n": [-1, 2, 3]})
    shown = safe_frame(frame)
    assert shown["file"].tolist()[:2] == ["'@SUM(1).png", "ok.png"] and pd.isna(shown["file"][2])
    assert shown["n"].tolist() == [-1, 2, 3]
    assert frame["file"][0] == "@SUM(1).png"  # the caller's frame is left alone


def test_batch_csv_escapes_file_names_and_messages() -> None:
    from h2a.predict.report import CSV_COLUMNS, batch_csv

    records = [{"file": name, "error": f"{name}: not an image", "warnings": [], "sds": -2.5,
                "bone_age_months": 101.0} for name in HOSTILE]
    rows = _cells(batch_csv(records).decode())
    assert rows[0] == CSV_COLUMNS
    col = {c: i for i, c in enumerate(CSV_COLUMNS)}
    for name, row in zip(HOSTILE, rows[1:]):
        assert row[col["file"]] == "'" + name and row[col["error"]].startswith("'")
        assert row[col["sds"]] == "-2.5" and row[col["bone_age_months"]] == "101.0"


def test_every_csv_writer_goes_through_exports() -> None:
    """No page or command writes CSV around the escaping (pandas' to_csv, csv.writer)."""
    offenders = []
    for path in sorted([*(REPO / "h2a").rglob("*.py"), *(REPO / "app_pages").rglob("*.py")]):
        if path.name == "exports.py":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.to_csv\(|csv\.(writer|DictWriter)\(", line):
                offenders.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert not offenders, offenders


def test_cluster_out_escapes_ids(monkeypatch, tmp_path, demo_dir, capsys) -> None:
    """``h2a cluster --out``: ids from a label CSV reach the file escaped (the embedding and
    UMAP steps are replaced by their result so the test stays fast)."""
    from h2a.analysis import clustering, embeddings
    from h2a.cli import main

    frame = pd.DataFrame({"id": HOSTILE, "umap_x": np.linspace(-2, 2, len(HOSTILE)), "umap_y": 0.5,
                          "cluster": [0, 1] * 3 + [0], "sex": "female"})
    monkeypatch.setattr(embeddings, "compute_embeddings", lambda *a, **k: list(range(len(HOSTILE))))
    monkeypatch.setattr(clustering, "cluster_embeddings", lambda *a, **k: (None, frame, {"n": len(frame)}))
    out = tmp_path / "sub" / "clusters.csv"
    assert main(["cluster", "--data", str(demo_dir), "--k", "2", "--image-size", "64", "--out", str(out),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["csv"] == str(out)
    rows = _cells(out.read_bytes().decode())
    assert [r[0] for r in rows[1:]] == ["'" + h for h in HOSTILE]
    assert rows[1][1] == "-2.0"  # a coordinate stays a number


@pytest.fixture(scope="module")
def hostile_files(tiny_run, demo_dir, tmp_path_factory) -> list[Path]:
    """A demo image under file names that are formulas."""
    meta = json.loads((tiny_run / "metadata.json").read_text())
    vid = str(meta["splits"]["validation"][0])
    src = next(p for p in demo_dir.rglob(f"{vid}.png"))
    folder = tmp_path_factory.mktemp("hostile")
    names = ['=HYPERLINK("http:x","y")', "@SUM(1)", "+1+1", "-2+3", "\t=1"]
    out = []
    for n in names:
        shutil.copy(src, folder / f"{n}.png")
        out.append(folder / f"{n}.png")
    return out


def _cli_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m h2a`` run from ``folder``, so files are named as a user types them there."""
    return subprocess.run([sys.executable, "-m", "h2a", *args], cwd=folder, capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_predict_csv_writes_the_pages_table(hostile_files, tiny_run, tmp_path) -> None:
    from h2a.predict.report import batch_csv

    out = tmp_path / "table.csv"
    names = [f.name for f in hostile_files]
    proc = _cli_in(hostile_files[0].parent, "predict", "--model", str(tiny_run), "--sex", "female",
                   "--age-months", "100", "--tta", "1", "--csv", str(out), "--json", "--", *names)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)  # --json output stays a valid document next to --csv
    assert [r["file"] for r in results] == names and all(r["bone_age_months"] > 0 for r in results)
    assert out.read_bytes() == batch_csv(results)  # the page's table, from the same function
    rows = _cells(out.read_bytes().decode())
    assert [r[0] for r in rows[1:]] == ["'" + n for n in names]
    assert not [c for r in rows for c in r if _formula_like(c) and not _is_number(c)]
    back = pd.read_csv(out)
    assert back["bone_age_months"].dtype == float and back["chronological_age_months"].eq(100).all()


def test_predict_csv_text_mode_says_where_and_refuses_a_folder(hostile_files, tiny_run, tmp_path) -> None:
    out = tmp_path / "t.csv"
    proc = run_cli("predict", "--model", str(tiny_run), str(hostile_files[1]), "--sex", "male", "--tta", "1",
                   "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"table written to {out}" in proc.stdout and len(_cells(out.read_bytes().decode())) == 2
    proc = run_cli("predict", "--model", str(tiny_run), str(hostile_files[1]), "--sex", "male", "--csv",
                   str(tmp_path))
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr
