"""Pages at scale: expensive per-dataset results are computed once per server (not once per
browser session), only when their tab is opened, and thumbnails come from the on-disk
cache. Decodes are counted through ``imageio.read_image``, the app's only decoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from h2a.analysis import stats
from h2a.data import imageio
from tests.conftest import REPO

POPULATION = "app_pages/population.py"


def make_dataset(root: Path, n: int = 40) -> Path:
    """A small RSNA-layout folder: hand-like gradients of varied exposure, labelled."""
    import numpy as np
    from PIL import Image

    images = root / "boneage-training-dataset"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["id,boneage,male"]
    for i in range(n):
        h, w = 260 + 4 * i, 200
        base = np.linspace(20, 200 - 2 * i, h)[:, None] * np.ones((1, w))
        img = np.clip(base + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(images / f"{1000 + i}.png")
        rows.append(f"{1000 + i},{6 + 5 * i},{'True' if i % 2 else 'False'}")
    (root / "boneage-training-dataset.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def counts(monkeypatch, tmp_path):
    """A fresh workspace (empty thumbnail cache), a small dataset as H2A_DATA_DIR, empty
    Streamlit caches, and counters of decodes and intensity summaries."""
    monkeypatch.setenv("H2A_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("H2A_DATA_DIR", str(make_dataset(tmp_path / "hands")))
    st.cache_data.clear()
    seen = {"decodes": 0, "summaries": 0}
    read_image, summary = imageio.read_image, stats.intensity_summary

    def counted_read(*args, **kwargs):
        seen["decodes"] += 1
        return read_image(*args, **kwargs)

    def counted_summary(*args, **kwargs):
        seen["summaries"] += 1
        return summary(*args, **kwargs)

    monkeypatch.setattr(imageio, "read_image", counted_read)
    monkeypatch.setattr(stats, "intensity_summary", counted_summary)
    yield seen
    st.cache_data.clear()


def _session(counts: dict, tab: str | None = None, page: str = POPULATION) -> AppTest:
    """A new browser session on ``page`` (with the population tab ``tab`` selected); the
    Home page it lands on first (six thumbnails) is left out of the decode count."""
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    at.run()
    counts["decodes_before_page"] = counts["decodes"]
    at.switch_page(page)
    if tab is not None:
        at.session_state["pop_tab"] = tab
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_first_visit_computes_no_hidden_tab(counts) -> None:
    at = _session(counts)
    assert [t.label for t in at.tabs][:4] == ["Bone age by sex", "Splits", "Images", "Gallery"]
    assert len(at.get("plotly_chart")) == 2  # the open tab's charts only
    before = counts["decodes_before_page"]
    assert counts["summaries"] == 0 and counts["decodes"] == before  # no intensity summary, no gallery
    at.session_state["pop_tab"] = "Splits"
    at.run()
    assert not at.exception and at.dataframe
    assert counts["summaries"] == 0 and counts["decodes"] == before
    at.session_state["pop_tab"] = "Gallery"  # opening the tab is what computes it
    at.run()
    assert not at.exception and counts["decodes"] == before + len(at.get("image")) == before + 12


def test_intensity_summary_is_computed_once_for_every_session(counts) -> None:
    first = _session(counts, tab="Images")
    assert counts["summaries"] == 1
    decodes = counts["decodes"]
    assert decodes - counts["decodes_before_page"] == 40  # the sample: every image of this small set
    assert any("Intensity" in m.value for m in first.markdown)
    charts = len(first.get("plotly_chart"))
    assert charts == 4  # resolution, sizes, intensity vs contrast, intensity SD
    second = _session(counts, tab="Images")  # another user, another browser session
    assert counts["summaries"] == 1 and counts["decodes"] == decodes
    assert len(second.get("plotly_chart")) == charts


def test_gallery_thumbnails_survive_a_server_restart(counts) -> None:
    at = _session(counts, tab="Gallery")
    shown = len(at.get("image"))
    assert shown == 12 and counts["decodes"] == counts["decodes_before_page"] + shown
    decodes = counts["decodes"]
    st.cache_data.clear()  # a new server process: memory caches gone, the workspace stays
    again = _session(counts, tab="Gallery")
    assert len(again.get("image")) == shown
    assert counts["decodes"] == decodes  # home's and the gallery's thumbnails read back from the workspace
    thumbs = list((Path(st_ws()) / "cache" / "thumbs").rglob("*.npy"))
    assert len(thumbs) >= shown


def st_ws() -> str:
    from h2a.settings import get_settings

    return str(get_settings().workspace)


def test_intensity_summary_reads_the_thumbnails_the_gallery_made(counts, tmp_path) -> None:
    """A summary after the thumbnails exist decodes nothing; its figures match full decodes."""
    import numpy as np

    from h2a.data.datasets import load_dataset

    ds = load_dataset(tmp_path / "hands")
    first = stats.intensity_summary(ds, n=20)
    decodes = counts["decodes"]
    assert len(first) == 20 and decodes == 20
    again = stats.intensity_summary(ds, n=20)
    assert counts["decodes"] == decodes
    assert again.equals(first)
    row = first.iloc[0]
    full = imageio.read_image(ds.path_of(row["id"]))
    assert row["mean"] == pytest.approx(float(full.mean()), abs=2 / 255)
    assert row["p95"] - row["p05"] == pytest.approx(row["range"])
    assert np.isfinite(first[["mean", "std", "p05", "p95"]].to_numpy()).all()
