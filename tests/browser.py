"""Shared plumbing for the Chromium tests: one `streamlit run` of the app per test
session, Debian's Chromium driven by Playwright, and a wait for a page to settle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
SHOTS = REPO / ".h2a-screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(log_path: Path, env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`streamlit run streamlit_app.py` on a free loopback port; yields its base URL and
    process (``bench/bench_pages.py`` samples the server's CPU time through it)."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ) if env is None else env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"streamlit did not start; see {log_path}")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@contextmanager
def app_server(log_path: Path) -> Iterator[str]:
    with streamlit_server(log_path) as (url, _):
        yield url


@contextmanager
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_idle(page, timeout: float = 240) -> None:
    """Wait for the page title, then until the script run ends and images have loaded."""
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout * 1000)
    deadline = time.time() + timeout
    time.sleep(1.0)
    while time.time() < deadline:
        # the app's own run state (bench/bench_pages.py waits the same way): the status
        # widget also hides while a script still runs, e.g. between fragment reruns
        if page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').count():
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=60_000)
            return
        time.sleep(0.5)
    raise AssertionError("page still running after timeout")


def screenshot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_page(browser, url: str, height: int = 1000):
    """A new page at ``url``, settled; returns (page, errors) where errors collects JS errors."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    wait_idle(page)
    return page, errors
