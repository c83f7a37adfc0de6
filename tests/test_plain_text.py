"""Issue 30, items 3 and 5: nothing from a file is rendered, every table's CSV is escaped.

* ``h2a.app.plain.plain``: Markdown, HTML, links, images, math, directives, shortcodes and
  bare URLs neutralised; control characters flattened; long values cut.
* ``safe_table``: what every ``st.dataframe``/``st.data_editor`` gets (the toolbar's
  "Download as CSV" exports the cells as given), and a check that every table call in the
  pages and ``h2a/app`` goes through it.
* In Chromium: hostile payloads through ``plain`` in every kind of rendering element of the
  real Streamlit frontend; the Predict page with a hostile file name and a hostile DICOM;
  the Predict tables' toolbar CSV.
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from h2a.app.plain import ELLIPSIS, MARKDOWN_SPECIALS, WORD_JOINER, cut, plain, safe_table
from h2a.exports import FORMULA_START

REPO = Path(__file__).resolve().parent.parent
OUTSIDE = "127.0.0.1:9"  # the discard port: nothing answers; a request to it is the leak
PAYLOADS = [
    "**bold** __strong__ _it_ *em* ~~strike~~ `code`",
    f"[click me](http://{OUTSIDE}/a) ![x](http://{OUTSIDE}/beacon.png) [ref][r]",
    f'<img src="http://{OUTSIDE}/c.png"> <b>html</b> <a href="http://{OUTSIDE}/">tag</a> &lt;i&gt; &#42;',
    f"<http://{OUTSIDE}/auto> http://{OUTSIDE}/bare www.example.com someone@example.com",
    "$x^2$ and $$y$$ :smile: :material/home: :streamlit: :red[red] :small[s] :red-badge[b] :help[h]",
    "# heading",
    "> quote",
    "1. item",
    "- item",
    "| a | b |",
    "line one\nline two\n===\n\n    indented\r\n---",
    "\\*escaped\\* \\",
    "tab\there \x00 nul \u202egnp.exe bidi",
]


def _shown(text: str) -> str:
    """What a reader should see for ``text``: the text itself, on one line, cut."""
    return cut(text)


# ---------------------------------------------------------------- the helper

@pytest.mark.parametrize("text", PAYLOADS)
def test_plain_escapes_every_trigger(text: str) -> None:
    out = plain(text)
    assert "\n" not in out and "\r" not in out and "\x00" not in out and "\u202e" not in out
    i = 0
    while i < len(out):  # every special character is escaped, every escape is of a special
        c = out[i]
        if c == "\\":
            assert out[i + 1] in MARKDOWN_SPECIALS, out
            i += 2
            continue
        assert c not in MARKDOWN_SPECIALS, (c, out)
        i += 1
    # what CommonMark makes of the escapes is the text itself (the browser test checks the real renderer)
    assert re.sub(r"\\(.)", r"\1", out.replace(WORD_JOINER, "")) == cut(text)
    # the text passes (shortcodes, bare URLs, e-mail) find nothing: a word joiner follows : and @
    assert ":" not in out.replace("\\:" + WORD_JOINER, "")
    assert "@" not in out.replace("\\@" + WORD_JOINER, "")
    assert "www\\." not in out.lower()


def test_plain_keeps_ordinary_text_readable() -> None:
    assert plain("hand 12 of 3, it's \"fine\" / ok = yes") == "hand 12 of 3, it's \"fine\" / ok = yes"
    assert plain("hand.png") == "hand\\.png"
    assert plain(None) == ""
    assert plain(Path("/data/x_1")) == "/data/x\\_1"


def test_long_values_are_cut_with_an_ellipsis() -> None:
    huge = "A" * 5_000_000  # a 5 MB tag value
    t0 = time.perf_counter()
    out = plain(huge)
    assert time.perf_counter() - t0 < 0.5  # never walks the whole value
    assert len(out) == 200 and out.endswith(ELLIPSIS)
    assert plain("x" * 200) == "x" * 200
    assert plain("x" * 201, limit=50) == "x" * 49 + ELLIPSIS
    # whitespace that flattening would drop does not hide a cut
    assert cut(" " * 2000 + "tail", 10).endswith(ELLIPSIS)


def test_safe_table_escapes_formulas_and_cuts_cells() -> None:
    frame = pd.DataFrame({"file": ['=HYPERLINK("http://x","y")', "+SUM(1)", "\t-2+3", "@cmd", "ok.png", "x" * 5000],
                          "SDS": [-1.5, 2.0, None, 0.0, 1.0, 3.0],
                          "when": [pd.Timestamp("2020-01-01")] * 6})
    out = safe_table(frame)
    assert list(out["file"][:5]) == ["'=HYPERLINK(\"http://x\",\"y\")", "'+SUM(1)", "'-2+3", "'@cmd", "ok.png"]
    assert len(out["file"][5]) == 1000 and out["file"][5].endswith(ELLIPSIS)
    assert out["SDS"].iloc[0] == -1.5 and pd.isna(out["SDS"].iloc[2])  # numbers stay numbers
    assert (out["when"] == frame["when"]).all()
    assert frame["file"][0].startswith("=")  # the caller's frame is untouched
    # H2A's own signed figures can be kept as typed, in their place
    ours = safe_table(frame.assign(ci="+1.0 to +2.0")[["ci", "file"]], own=("ci",))
    assert list(ours.columns) == ["ci", "file"] and ours["ci"][0] == "+1.0 to +2.0" and ours["file"][1] == "'+SUM(1)"


def test_chart_labels_are_text() -> None:
    """Plotly draws <b>, <a href> ... in legend entries and hover texts: ids, split and run
    names reach it as entities, which it shows as the characters."""
    import plotly.express as px

    from h2a.app.charts import hover_ids, style

    df = pd.DataFrame({"x": [1, 2], "y": [1, 2], "id": ["<b>a</b>", "b"],
                       "split": [f'<a href="https:{OUTSIDE}">s</a>', "t"]})
    fig = style(px.scatter(hover_ids(df, "id"), x="x", y="y", color="split", hover_name="id", hover_data=["id"]))
    fig = style(fig)  # idempotent
    assert [t.name for t in fig.data] == [f'&lt;a href="https:{OUTSIDE}"&gt;s&lt;/a&gt;', "t"]
    assert list(fig.data[0].hovertext) == ["&lt;b&gt;a&lt;/b&gt;"]
    assert fig.data[0].customdata.tolist() == [["&lt;b&gt;a&lt;/b&gt;"]]


def _table_calls() -> list[tuple[str, int, str]]:
    """(file, line, why) for every st.dataframe / st.data_editor call whose data does not come
    from ``safe_table`` (directly, or through a name assigned from it in the same scope)."""
    bad = []
    files = sorted((REPO / "app_pages").glob("*.py")) + sorted((REPO / "h2a" / "app").glob("*.py"))
    files.append(REPO / "streamlit_app.py")
    for path in files:
        tree = ast.parse(path.read_text())
        scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for scope in scopes:
            safe = {t.id for n in ast.walk(scope) if isinstance(n, ast.Assign)
                    and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", None) == "safe_table"
                    for t in n.targets if isinstance(t, ast.Name)}
            for node in ast.walk(scope):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                if node.func.attr == "table":  # st.table renders Markdown in its cells
                    bad.append((str(path.relative_to(REPO)), node.lineno, "st.table: use st.dataframe(safe_table(...))"))
                if node.func.attr not in ("dataframe", "data_editor"):
                    continue
                arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "data"), None)
                ok = (isinstance(arg, ast.Call) and getattr(arg.func, "id", None) == "safe_table") or (
                    isinstance(arg, ast.Name) and arg.id in safe)
                if not ok:
                    bad.append((str(path.relative_to(REPO)), node.lineno, ast.unparse(node)[:80]))
    return sorted(set(bad))


def test_every_page_table_goes_through_safe_table() -> None:
    """A table's toolbar exports its cells unescaped: each one is handed escaped cells."""
    assert _table_calls() == []


# ---------------------------------------------------------------- in Chromium

# Every element kind the pages put file text into, each given plain(payload).
RENDER_SCRIPT = """
import json, os
import numpy as np
import streamlit as st
from h2a.app.plain import plain

payloads = json.loads(open(os.environ["H2A_PLAIN_PAYLOADS"]).read())
st.title("plain")
for i, p in enumerate(payloads):
    t = p if os.environ.get("H2A_PLAIN_RAW") else plain(p)  # RAW: the negative control, every check fails
    st.markdown(t)
    st.caption(t)
    st.error(t)
    st.info(f"**label**: {t}")
    st.image(np.zeros((4, 4), np.uint8), caption=t)
    with st.expander(t):
        st.write("inside")
    st.metric(t, t, help=t)
    st.radio(t, [t, "other"], key=f"r{i}")
    st.tabs([t, "other"])
    st.progress(0.5, text=t)
"""

# Elements that Markdown in a payload could create inside Streamlit's rendered text.
FORMED_JS = """(outside) => {
  const bad = [];
  const roots = document.querySelectorAll('[data-testid="stMarkdownContainer"]');
  for (const root of roots) {
    if (root.closest('[data-testid="stHeading"]')) continue;  // the script's own title
    for (const el of root.querySelectorAll('a, img, strong, em, del, code, pre, h1, h2, h3, h4, h5, h6, '
        + 'blockquote, ul, ol, li, table, hr, .katex, [data-testid="stIconMaterial"], span[style], '
        + 'streamlit-help-icon, input')) {
      const wrapper = el.tagName === 'STRONG' && el.textContent.trim() === 'label';  // the test's own **label**
      if (!wrapper) bad.push(el.outerHTML.slice(0, 200));
    }
  }
  for (const el of document.querySelectorAll('a[href], img[src], iframe[src], link[href]')) {
    const url = el.getAttribute('href') || el.getAttribute('src') || '';
    if (url.includes(outside)) bad.push(el.outerHTML.slice(0, 200));
  }
  return bad;
}"""


def _browser():
    from tests.browser import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (bash scripts/setup.sh --browser)")


def _requests_to_outside(page) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if OUTSIDE in r.url else None)
    return seen


@pytest.mark.browser
def test_payloads_render_as_text_in_every_element(tmp_path, workspace) -> None:
    """The real frontend, every element kind: no element forms, no outside request, and the
    text a reader sees is the payload itself."""
    import json

    from tests.browser import chromium, free_port, wait_idle

    _browser()

    script = tmp_path / "render.py"
    script.write_text(RENDER_SCRIPT)
    (tmp_path / "payloads.json").write_text(json.dumps(PAYLOADS))
    port = free_port()
    env = dict(os.environ, H2A_PLAIN_PAYLOADS=str(tmp_path / "payloads.json"))
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            outside = _requests_to_outside(page)
            page.goto(url)
            wait_idle(page, timeout=120)
            page.wait_for_timeout(1500)  # lazily loaded plugins (math, emoji) have had their chance
            formed = page.evaluate(FORMED_JS, OUTSIDE)
            texts = page.evaluate("""() => Array.from(document.querySelectorAll(
                '[data-testid="stMarkdown"] [data-testid="stMarkdownContainer"]')).map(e => e.innerText)""")
            body = page.inner_text("body")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert formed == [], formed
    assert outside == [], outside
    shown = [t.replace(WORD_JOINER, "").strip() for t in texts]
    for p in PAYLOADS:
        assert _shown(p) in shown, (p, shown)
    for emoji in ("\U0001F604", "\u2b50"):  # :smile: and a stray shortcode
        assert emoji not in body


@pytest.fixture(scope="module")
def hand_png(demo_dir) -> bytes:
    from h2a.data.datasets import load_dataset

    ds = load_dataset(demo_dir)
    return Path(ds.meta.sort_values("id").iloc[0]["path"]).read_bytes()


@pytest.fixture(scope="module")
def hostile_dicom(tmp_path_factory, hand_png) -> bytes:
    """A hand DICOM whose shown tags hold Markdown: PatientAge (the form's caption),
    BodyPartExamined and Modality (the 'not a hand' / 'not a radiograph' alerts)."""
    import pydicom

    from tests.corpus import make_dicom

    u8 = np.asarray(Image.open(io.BytesIO(hand_png)).convert("L"))
    path = make_dicom(tmp_path_factory.mktemp("hostile") / "hand.dcm", array=u8.astype(np.uint16) * 257, sex="F",
                      birth_date="20150302", study_date="20260115")
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the values are invalid for their VRs: that is the point
        ds.PatientAge = f"![x](http://{OUTSIDE}/beacon.png) [click me](http://{OUTSIDE}/)"
        ds.BodyPartExamined = f"**FOOT** <img src=http://{OUTSIDE}/part.png> [click me](http://{OUTSIDE}/p)"
        ds.Modality = f"![m](http://{OUTSIDE}/modality.png)"
        ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


PAGE_LEAKS_JS = """(outside) => {
  const bad = [];
  for (const el of document.querySelectorAll('a, img, iframe, link')) {
    const url = el.getAttribute('href') || el.getAttribute('src') || '';
    if (url.toLowerCase().includes(outside) || /click me/i.test(el.textContent) || el.textContent.trim() === 'link')
      bad.push(el.outerHTML.slice(0, 200));
  }
  for (const el of document.querySelectorAll('[data-testid="stMain"] strong, [data-testid="stMain"] em')) {
    if (['bold', 'FOOT'].includes(el.textContent.trim())) bad.push(el.outerHTML.slice(0, 200));
  }
  return bad;
}"""


def _estimate(page, sex: str | None) -> None:
    if sex:
        page.get_by_text("Sex (required)").wait_for(timeout=60_000)
        page.get_by_text(sex, exact=True).click()
    page.get_by_role("button", name="Estimate bone age").click()
    page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=180_000)
    page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)


@pytest.mark.browser
def test_predict_page_shows_a_hostile_file_name_and_dicom_as_text(app_url, browser, hand_png,
                                                                 hostile_dicom) -> None:
    from tests.browser import screenshot

    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    outside = _requests_to_outside(page)
    name = f"**bold** [link](http://{OUTSIDE}/x).png"

    # (a) a PNG named with Markdown: the spinner, the image caption
    page.goto(f"{app_url}/predict")
    page.wait_for_selector('input[type="file"]', state="attached", timeout=120_000)
    page.set_input_files('input[type="file"]', files=[{"name": name, "mimeType": "image/png", "buffer": hand_png}])
    _estimate(page, "male")
    captions = [c.replace(WORD_JOINER, "") for c in page.locator('[data-testid="stImageCaption"]').all_inner_texts()]
    assert any(c.startswith(name + " · ") for c in captions), captions  # shown as typed
    assert page.evaluate(PAGE_LEAKS_JS, OUTSIDE) == []

    # (b) a DICOM whose tags hold Markdown and HTML: the header caption, the alerts
    page.goto(f"{app_url}/predict")
    page.wait_for_selector('input[type="file"]', state="attached", timeout=120_000)
    page.set_input_files('input[type="file"]', files=[{"name": "hand.dcm", "mimeType": "application/dicom",
                                                       "buffer": hostile_dicom}])
    page.get_by_text("From the DICOM header").wait_for(timeout=60_000)
    header = page.get_by_text("From the DICOM header").inner_text().replace(WORD_JOINER, "")
    assert f"![X](HTTP://{OUTSIDE}/BEACON.PNG)" in header, header  # the tag's text (upper-cased by the reader)
    assert page.evaluate(PAGE_LEAKS_JS, OUTSIDE) == []
    _estimate(page, None)  # sex comes from the header
    alerts = page.locator('[data-testid="stAlert"]').all_inner_texts()
    assert any("**FOOT**" in a.replace(WORD_JOINER, "") for a in alerts), alerts
    page.wait_for_timeout(500)
    assert page.evaluate(PAGE_LEAKS_JS, OUTSIDE) == []
    screenshot(page, "predict-hostile-dicom")
    page.close()
    assert outside == [], outside
    assert not errors, errors


# The toolbar's "Download as CSV" writes through the File System Access API when the browser
# has it: this stand-in keeps what it writes, so a test can read the CSV without a dialog.
SAVE_PICKER_STUB = """
window.__csv = [];
window.showSaveFilePicker = async () => ({
  createWritable: async () => {
    let text = '';
    return {
      write: async (chunk) => { text += typeof chunk === 'string' ? chunk : new TextDecoder().decode(chunk); },
      close: async () => { window.__csv.push(text); },
    };
  },
});
"""


def _toolbar_csv(page, table) -> list[list[str]]:
    """Click the toolbar's 'Download as CSV' of ``table`` (a stDataFrame locator); the rows."""
    before = page.evaluate("window.__csv.length")
    table.hover()
    table.locator('[data-testid="stElementToolbar"]').get_by_role("button", name="Download as CSV").click()
    page.wait_for_function(f"window.__csv.length > {before}", timeout=30_000)
    text = page.evaluate("window.__csv[window.__csv.length - 1]")
    return list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))


def _formula_cells(rows: list[list[str]]) -> list[str]:
    """Text cells a spreadsheet would run as a formula (numbers such as -1.5 are constants)."""
    bad = []
    for row in rows[1:]:
        for cell in row:
            try:
                float(cell)
                continue
            except ValueError:
                pass
            if cell.startswith(FORMULA_START):
                bad.append(cell)
    return bad


@pytest.mark.browser
def test_predict_tables_toolbar_csv_has_no_formula(app_url, browser, hand_png) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.add_init_script(SAVE_PICKER_STUB)
    outside = _requests_to_outside(page)
    names = [f'=HYPERLINK("http://{OUTSIDE}/","x").png', "+SUM(1).png", "\t@cmd.png", "-2+3.png"]
    page.goto(f"{app_url}/predict")
    page.wait_for_selector('input[type="file"]', state="attached", timeout=120_000)
    page.set_input_files('input[type="file"]', files=[{"name": n, "mimeType": "image/png", "buffer": hand_png}
                                                      for n in names])
    tables = page.locator('[data-testid="stDataFrame"]')
    tables.first.wait_for(timeout=60_000)
    editor = _toolbar_csv(page, tables.first)
    assert editor[0][0] == "file" and len(editor) == 1 + len(names)
    assert _formula_cells(editor) == [], editor
    # (the browser sends a name's double quotes as %22)
    assert editor[1][0].startswith("'=HYPERLINK(") and editor[2][0] == "'+SUM(1).png", editor

    page.get_by_text("female", exact=True).first.click()  # the sex for every file without one
    page.get_by_role("button", name=f"Estimate bone age for {len(names)} files").click()
    page.get_by_role("heading", name="Results").wait_for(timeout=180_000)
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stDataFrame\"]').length >= 2",
                           timeout=60_000)
    rows = _toolbar_csv(page, page.locator('[data-testid="stDataFrame"]').nth(1))
    assert rows[0][:2] == ["file", "sex"], rows[0]
    assert len(rows) == 1 + len(names)
    assert _formula_cells(rows) == [], rows
    assert rows[1][0].startswith("'=HYPERLINK(") and rows[2][0] == "'+SUM(1).png", rows
    page.close()
    assert outside == [], outside
