"""The real app in headless Chromium: every page loads, draws its charts, shows no error."""

from __future__ import annotations

import pytest

from tests.browser import open_page, screenshot, wait_idle

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("path, min_charts", [("", 0), ("population", 2), ("preprocessing", 2), ("training", 1),
                                              ("evaluation", 4)])
def test_page_in_chromium(app_url, browser, path: str, min_charts: int) -> None:
    page, errors = open_page(browser, f"{app_url}/{path}", height=2600)
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


def test_first_visit_to_a_page_url_gets_the_whole_app(browser, workspace) -> None:
    """On a fresh server the first request for /population must still run inside the app's
    navigation (sidebar, dataset picker), not as a bare page file."""
    from tests.browser import app_server

    # a second, fresh server; the shared browser (one Playwright per process)
    with app_server(workspace / "streamlit-fresh.log") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(f"{url}/population")
        wait_idle(page)
        assert page.url.rstrip("/").endswith("/population")
        sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
        assert "Dataset" in sidebar and "Bone-age training" in sidebar
        assert page.get_by_role("heading", name="Population statistics").count() == 1
        page.close()
