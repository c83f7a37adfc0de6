"""The sex and clusters pages in headless Chromium: the cluster map answers hover with the
image's id, sex and bone age, and a box drawn with the mouse shows the selected radiographs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_sex import make_sex_run


CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
SHOTS = REPO / ".h2a-screenshots"


@pytest.fixture(scope="module")
def server(demo_dir, workspace):
    """``streamlit run`` of the app (or of the page files alone until the app registers them)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    make_sex_run(demo_dir, workspace)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registered = "pages/clusters.py" in (REPO / "streamlit_app.py").read_text()
    procs, urls = [], {}
    log = open(workspace / "streamlit-sex-clusters.log", "w")
    entries = {"app": "streamlit_app.py"} if registered else {"clusters": "pages/clusters.py", "sex": "pages/sex.py"}
    try:
        for i, (name, script) in enumerate(entries.items()):
            p = port + 10 * i if i else port
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(p), "--server.address",
                 "127.0.0.1", "--server.headless", "true"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ)))
            url = f"http://127.0.0.1:{p}"
            for _ in range(120):
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail(f"streamlit did not start ({script})")
            urls[name] = url
        if registered:
            urls = {"clusters": f"{urls['app']}/clusters", "sex": f"{urls['app']}/sex"}
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _wait_idle(page, timeout: float = 240) -> None:
    import time

    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline = time.time() + timeout
    time.sleep(1.5)
    while time.time() < deadline:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            return
        time.sleep(0.5)
    raise AssertionError("page still running after timeout")


@pytest.mark.browser
def test_clusters_map_hover_and_box_select_in_chromium(server, browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server["clusters"])
    _wait_idle(page)
    chart = page.locator(".js-plotly-plot", has_text="UMAP map").first
    chart.wait_for(timeout=120_000)
    chart.scroll_into_view_if_needed()
    points = chart.locator(".scatterlayer path.point")
    assert points.count() > 100

    # hover: plotly's tooltip names the image and shows its sex and bone age
    points.nth(0).hover(force=True)
    page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
    tip = chart.locator(".hoverlayer .hovertext").first.text_content()
    assert "sex=" in tip and "bone age" in tip, tip

    # click one point: its radiograph appears below the map
    points.nth(3).hover(force=True)
    page.mouse.down()
    page.mouse.up()
    page.wait_for_selector("text=Selected images (1)", timeout=120_000)
    _wait_idle(page)
    page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)
    assert len(page.locator('[data-testid="stImageCaption"]').all_inner_texts()) == 1

    # box select from the toolbar, dragged across the whole plot area: the group's images appear
    chart.hover()
    page.locator('[data-testid="stPlotlyChart"]', has_text="UMAP map").first.locator(
        '.modebar-btn[data-title="Box Select"]').click()
    box = chart.locator(".nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.move(box["x"] + box["width"] - 5, box["y"] + box["height"] - 5, steps=5)
    page.mouse.up()
    page.wait_for_selector("text=/Selected images \\((?![01]\\))\\d+\\)/", timeout=120_000)
    _wait_idle(page)
    page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    assert len(captions) >= 8 and all(" mo · c" in c for c in captions), captions[:3]
    assert page.locator('[data-testid="stException"]').count() == 0
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "clusters.png"), full_page=True)
    page.close()
    assert not errors, errors


@pytest.mark.browser
def test_sex_page_in_chromium(server, browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server["sex"])
    _wait_idle(page)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000, state="attached")
    page.locator(".js-plotly-plot", has_text="ROC curve").first.wait_for(timeout=60_000)
    assert page.locator(".js-plotly-plot").count() >= 5
    body = page.inner_text("body")
    assert "tells boys from girls" in body and "Traceback" not in body
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "sex.png"), full_page=True)
    page.close()
    assert not errors, errors
