"""The on-disk thumbnail cache: one decode per file version, a placeholder and a message
naming the file for a broken one, and never a half-written entry."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from h2a.data import imageio, thumbs


@pytest.fixture
def counted(monkeypatch):
    """Count the full decodes the cache asks imageio for."""
    calls: list[str] = []
    real = imageio.read_image

    def read_image(source, *args, **kwargs):
        calls.append(os.fspath(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(imageio, "read_image", read_image)
    return calls


def _png(path: Path, value: int, size=(300, 200)) -> Path:
    arr = np.full(size[::-1], value, np.uint8)
    arr[:, : size[0] // 2] = 255 - value  # two halves, so a resize is visible in the values
    Image.fromarray(arr).save(path)
    return path


def test_hit_miss_by_mtime_and_size(tmp_path, counted) -> None:
    root = tmp_path / "thumbs"
    img = _png(tmp_path / "a.png", 40)
    first = thumbs.get_thumbnail(img, 64, root=root)
    assert first.ok and not first.from_cache
    assert first.image.dtype == np.uint8 and max(first.image.shape) == 64  # longer side scaled to 64
    assert first.image.shape == (43, 64)
    again = thumbs.get_thumbnail(img, 64, root=root)
    assert again.from_cache and len(counted) == 1  # second view: no decode
    np.testing.assert_array_equal(again.image, first.image)
    other_side = thumbs.get_thumbnail(img, 32, root=root)
    assert not other_side.from_cache and len(counted) == 2  # the side is part of the key

    _png(img, 200)  # replaced in place: new contents, new mtime
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    fresh = thumbs.get_thumbnail(img, 64, root=root)
    assert not fresh.from_cache and len(counted) == 3
    assert fresh.image[0, -1] == 200  # the new picture, not the cached old one


def test_small_image_is_not_enlarged(tmp_path) -> None:
    img = _png(tmp_path / "small.png", 90, size=(40, 30))
    thumb = thumbs.get_thumbnail(img, 192, root=tmp_path / "t")
    assert thumb.image.shape == (30, 40)


def test_corrupt_file_gives_placeholder_and_names_the_file(tmp_path, counted) -> None:
    good = _png(tmp_path / "good.png", 10)
    bad = tmp_path / "1234.png"
    bad.write_bytes(good.read_bytes()[:200])  # a cut-off download
    thumb = thumbs.get_thumbnail(bad, 96, root=tmp_path / "t")
    assert not thumb.ok and "1234.png" in thumb.error
    assert thumb.image.shape == (96, 96) and thumb.image.dtype == np.uint8  # a placeholder to show
    again = thumbs.get_thumbnail(bad, 96, root=tmp_path / "t")
    assert again.error == thumb.error and again.from_cache and len(counted) == 1  # not re-read per view
    missing = thumbs.get_thumbnail(tmp_path / "gone.png", 96, root=tmp_path / "t")
    assert not missing.ok and "gone.png" in missing.error


def test_damaged_cache_entry_is_a_miss(tmp_path, counted) -> None:
    root = tmp_path / "t"
    img = _png(tmp_path / "a.png", 70)
    thumbs.get_thumbnail(img, 48, root=root)
    entries = list(root.rglob("*.npy"))
    assert len(entries) == 1 and not list(root.rglob(".*"))  # no temp file left behind
    entries[0].write_bytes(b"\x93NUMPY garbage")
    again = thumbs.get_thumbnail(img, 48, root=root)
    assert again.ok and not again.from_cache and len(counted) == 2


def test_unwritable_cache_still_returns_thumbnails(tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the cache folder cannot be created under a file
    img = _png(tmp_path / "a.png", 70)
    thumb = thumbs.get_thumbnail(img, 48, root=blocker / "thumbs")
    assert thumb.ok and max(thumb.image.shape) == 48


def test_default_root_is_in_the_workspace(workspace, tmp_path) -> None:
    img = _png(tmp_path / "a.png", 70)
    thumbs.get_thumbnail(img, 40)
    assert thumbs.thumbs_dir().is_relative_to(workspace)
    assert list(thumbs.thumbs_dir().rglob("*.npy"))


def test_full_resolution_original(fullres_dir, tmp_path, counted) -> None:
    src = min((fullres_dir / "boneage-training-dataset").glob("*.png"))
    copy = shutil.copy(src, tmp_path / src.name)
    thumb = thumbs.get_thumbnail(copy, 192, root=tmp_path / "t")
    full = imageio.read_image(copy)
    assert max(thumb.image.shape) == 192
    assert abs(thumb.image.shape[0] / thumb.image.shape[1] - full.shape[0] / full.shape[1]) < 0.02
    assert abs(thumb.image.mean() / 255 - full.mean()) < 0.01  # an area resize keeps the exposure
    assert thumbs.get_thumbnail(copy, 192, root=tmp_path / "t").from_cache
