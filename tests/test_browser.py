"""The real app in headless Chromium: every page loads, draws its charts, shows no error."""

from __future__ import annotations

import pytest

from tests.browser import screenshot, wait_idle

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("path, min_charts", [("", 0), ("population", 2), ("preprocessing", 2), ("training", 1),
                                              ("evaluation", 4)])
def test_page_in_chromium(app_url, browser, path: str, min_charts: int) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 2600})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{app_url}/{path}")
    wait_idle(page)
    if min_charts:
        # charts render one after another: wait for all of them, not the first
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {min_charts}",
                               timeout=120_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    body = page.inner_text("body")
    assert "synthetic" in body.lower()
    assert "Traceback" not in body
    screenshot(page, path or "home")
    page.close()
    assert not errors, errors


def test_gallery_filter_in_chromium(app_url, browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{app_url}/population")
    wait_idle(page)
    page.get_by_role("tab", name="Gallery").click()
    page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    assert captions and all("·" in c for c in captions)
    page.close()
