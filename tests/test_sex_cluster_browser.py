"""The sex and clusters pages in headless Chromium: the clusters page returns at once with its
background job's progress and fills in when it ends; the cluster map answers hover with the
image's id, sex and bone age, and a box drawn with the mouse shows the selected radiographs."""

from __future__ import annotations

import pytest

from tests.browser import open_page, screenshot, wait_idle
from tests.test_sex import make_sex_run


@pytest.fixture(scope="module")
def urls(app_url, demo_dir, workspace) -> dict[str, str]:
    make_sex_run(demo_dir, workspace)  # runs are read from disk on each page load
    return {"clusters": f"{app_url}/clusters", "sex": f"{app_url}/sex"}


@pytest.mark.browser
def test_clusters_map_hover_and_box_select_in_chromium(urls, browser) -> None:
    page, errors = open_page(browser, urls["clusters"], height=1000)  # returns at once: a background job
    if page.locator(".js-plotly-plot", has_text="UMAP map").count() == 0:
        page.get_by_text("Background job", exact=False).first.wait_for(timeout=60_000)
        screenshot(page, "clusters-running")
    chart = page.locator(".js-plotly-plot", has_text="UMAP map").first
    chart.wait_for(timeout=600_000)  # the page fills in by itself when the job ends
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
    wait_idle(page)
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
    wait_idle(page)
    page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    assert len(captions) >= 8 and all(" mo · c" in c for c in captions), captions[:3]
    assert page.locator('[data-testid="stException"]').count() == 0
    screenshot(page, "clusters")
    page.close()
    assert not errors, errors


@pytest.mark.browser
def test_sex_page_in_chromium(urls, browser) -> None:
    page, errors = open_page(browser, urls["sex"], height=1000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000, state="attached")
    page.locator(".js-plotly-plot", has_text="ROC curve").first.wait_for(timeout=60_000)
    assert page.locator(".js-plotly-plot").count() >= 5
    body = page.inner_text("body")
    assert "tells boys from girls" in body and "Traceback" not in body
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    screenshot(page, "sex")
    page.close()
    assert not errors, errors
