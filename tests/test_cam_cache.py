"""The pages' Grad-CAM helper (h2a.app.cam_ui) is cached: moving an opacity slider on the
Evaluation or Sex page computes no CAM again, and a new direction or a retrained model does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from h2a.app.cam_ui import cam_of_file, clear_cam_cache
from tests.conftest import open_page, settle
from tests.test_sex import make_sex_run


@pytest.fixture()
def cam_calls(monkeypatch) -> list[tuple]:
    """Every call of the core h2a.inference.cam.run_cam, recorded (and still computed)."""
    from h2a.inference import cam

    calls: list[tuple] = []
    real = cam.run_cam

    def counting(run, image_u8, male, *, negative=False):
        calls.append((str(run.path), image_u8.shape, male, negative))
        return real(run, image_u8, male, negative=negative)

    monkeypatch.setattr(cam, "run_cam", counting)
    clear_cam_cache()
    yield calls
    clear_cam_cache()


def test_cam_of_file_is_keyed_by_run_image_and_direction(demo_dir: Path, workspace: Path, cam_calls) -> None:
    from h2a.data.datasets import load_dataset

    run = make_sex_run(demo_dir, workspace)
    path = load_dataset(demo_dir).with_images()["path"].iloc[0]
    u8, heat = cam_of_file(run, path)
    assert u8.dtype == np.uint8 and heat.shape == u8.shape[:2] and 0 <= heat.min() <= heat.max() <= 1
    _, again = cam_of_file(run, path)
    assert len(cam_calls) == 1 and np.array_equal(again, heat)  # same key: from the cache
    cam_of_file(run, path, negative=True)
    assert len(cam_calls) == 2 and cam_calls[-1][-1] is True  # the other direction is another map
    model = run / "model.pt"
    st_ = model.stat()
    os.utime(model, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))  # "retrained": a new model.pt
    try:
        cam_of_file(run, path)
        assert len(cam_calls) == 3
    finally:
        os.utime(model, ns=(st_.st_atime_ns, st_.st_mtime_ns))


def test_sex_page_opacity_slider_computes_no_cam(demo_dir: Path, workspace: Path, cam_calls, monkeypatch) -> None:
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    make_sex_run(demo_dir, workspace)
    at = open_page("app_pages/sex.py")
    first = len(cam_calls)
    images = len(at.get("image"))
    assert first >= 2 and images >= 2  # confident right and wrong cases with overlays
    assert {c[2] for c in cam_calls} == {None}  # sex is never an input of a sex model
    at.slider(key="sex_alpha").set_value(0.8).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(cam_calls) == first and len(at.get("image")) == images


def test_evaluation_page_opacity_slider_computes_no_cam(tiny_run: Path, demo_dir: Path, cam_calls,
                                                         monkeypatch) -> None:
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    at = open_page("app_pages/evaluation.py")
    settle(at.multiselect(key="eval_runs").set_value([tiny_run.name]).run())
    assert not at.exception, [e.value for e in at.exception]
    assert len(cam_calls) == len(at.multiselect(key="eval_cam_ids").value) == 3
    assert "Bland-Altman: bias" in str(at.get("plotly_chart")[1].proto.spec)  # the core's limits in the title
    at.slider(key="eval_cam_alpha").set_value(0.9).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(cam_calls) == 3
    at.slider(key="eval_cam_alpha").set_value(0.1).run()
    assert len(cam_calls) == 3
