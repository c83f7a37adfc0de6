"""The real app in headless Chromium: every page loads, draws its charts, shows no error."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
SHOTS = REPO / ".h2a-screenshots"

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo_dir, tiny_run):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (bash scripts/setup.sh --browser)")
    port = _free_port()
    log = open(Path(os.environ["H2A_WORKSPACE"]) / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start")
        yield url
    finally:
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


def _wait_idle(page, timeout: float = 180) -> None:
    """Wait until the script run finished (no 'Running…' status widget)."""
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout * 1000)
    deadline = time.time() + timeout
    time.sleep(1.0)
    while time.time() < deadline:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            page.wait_for_function(
                "Array.from(document.images).every(i => i.complete)", timeout=60_000)
            return
        time.sleep(0.5)
    raise AssertionError("page still running after timeout")


@pytest.mark.parametrize("path, min_charts", [("", 0), ("population", 2), ("preprocessing", 2), ("training", 1),
                                              ("evaluation", 4)])
def test_page_in_chromium(server, browser, path: str, min_charts: int) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 2600})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/{path}")
    _wait_idle(page)
    if min_charts:
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        visible = page.locator(".js-plotly-plot").count()
        assert visible >= min_charts
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    body = page.inner_text("body")
    assert "synthetic" in body.lower()
    assert "Traceback" not in body
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{path or 'home'}.png"), full_page=True)
    page.close()
    assert not errors, errors


def test_gallery_filter_in_chromium(server, browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/population")
    _wait_idle(page)
    page.get_by_role("tab", name="Gallery").click()
    page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    assert captions and all("·" in c for c in captions)
    page.close()
