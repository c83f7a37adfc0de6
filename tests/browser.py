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

# True when the page has rendered (the tests' wait and bench/bench_pages.py's clock): a title,
# no script run in progress, no spinner, no element still a skeleton (the browser loads the
# image, chart and table components on first use: a page whose script has ended can show
# grey placeholders for another 0.5 s), every image loaded.
# ``expected`` (the title seen on an earlier visit) keeps a menu click from being "done"
# while the previous page is still on screen.
READY_JS = """(expected) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  const h1 = document.querySelector('[data-testid="stMain"] h1');
  if (!h1 || (expected && h1.textContent.trim() !== expected)) return false;
  if (document.querySelector('[data-testid="stSpinner"]')) return false;
  if (document.querySelector('[data-testid="stMain"] [data-testid="stSkeleton"]')) return false;
  return Array.from(document.images).every(i => i.complete);
}"""


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
    """A fresh Chromium from the process's one Playwright driver: Playwright's sync API allows
    one driver per thread at a time, and the suite's session browser holds one while other
    tests want browsers of their own (with other servers or headers)."""
    browser = _driver().chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    try:
        yield browser
    finally:
        browser.close()


_DRIVER: list = []


def _driver():
    """The Playwright driver, started on first use and stopped when the process exits."""
    if not _DRIVER:
        import atexit

        from playwright.sync_api import sync_playwright

        manager = sync_playwright()
        _DRIVER.append(manager.start())
        atexit.register(manager.__exit__, None, None, None)
    return _DRIVER[0]


def wait_idle(page, timeout: float = 240) -> None:
    """Wait until the page has rendered (``READY_JS``): title, run ended, no skeleton, images loaded."""
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout * 1000)
    time.sleep(1.0)  # a run that is about to start still reads 'notRunning'
    try:
        page.wait_for_function(READY_JS, arg=None, timeout=timeout * 1000, polling=250)
    except Exception as exc:  # noqa: BLE001 - Playwright's timeout type: name what did not settle
        raise AssertionError(f"page not rendered after {timeout} s (still running, a spinner or a skeleton)") from exc


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
