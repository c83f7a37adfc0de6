"""bench/make_scale_dataset.py: an RSNA-sized dataset of links that the app opens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from h2a.data.datasets import load_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "make_scale_dataset.py"
FULLRES = REPO.parent / "shared" / "data" / "rsna-fullres"
LABELS = REPO.parent / "shared" / "data" / "rsna-thumbs-100" / "boneage-training-dataset.csv"
pytestmark = pytest.mark.skipif(not (FULLRES.is_dir() and LABELS.is_file()), reason="needs ../shared/data")


def _make(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args],
                          check=False, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scale(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale") / "rsna-scale"
    proc = _make(out, "--n", "300")
    assert proc.returncode == 0, proc.stderr
    return out


def test_layout_opens_as_an_rsna_dataset(scale: Path) -> None:
    ds = load_dataset(scale)
    assert ds.problems == []
    assert ds.sources == {"boneage-training-dataset.csv": "kaggle",
                          "boneage-validation-dataset.csv": "validation"}
    counts = ds.meta["split"].value_counts().to_dict()
    assert counts == {"train": 300, "validation": round(300 * 1425 / 12611)}
    assert ds.meta["path"].notna().all() and ds.meta["id"].is_unique
    assert not ds.synthetic  # real radiographs, not the generated demo


def test_validation_csv_has_the_official_header(scale: Path) -> None:
    header = (scale / "boneage-validation-dataset.csv").read_text().splitlines()[0]
    assert header == "Image ID,male,Bone Age (months)"


def test_labels_are_realistic(scale: Path) -> None:
    meta = load_dataset(scale).meta
    assert meta["boneage"].between(1, 228).all()
    assert meta["boneage"].nunique() > 30  # drawn from the real spread, not a constant
    assert 0.40 < meta["male"].astype(float).mean() < 0.68  # the real data: ~54% male


def test_images_are_links_to_the_full_resolution_originals(scale: Path) -> None:
    originals = {(st.st_dev, st.st_ino) for st in (p.stat() for p in (FULLRES / "boneage-training-dataset").iterdir())}
    images = sorted((scale / "boneage-training-dataset").iterdir())
    assert len(images) == 300
    assert {(st.st_dev, st.st_ino) for st in (p.stat() for p in images)} <= originals
    for p in images[:5]:  # each id is its own path (hard link) or points at an original (symlink)
        assert p.is_symlink() or p.stat().st_nlink > 1


def test_rerun_is_idempotent_and_keeps_mtimes(scale: Path) -> None:
    csv = scale / "boneage-training-dataset.csv"
    before = (csv.read_bytes(), csv.stat().st_mtime_ns, load_dataset(scale).fingerprint)
    proc = _make(scale, "--n", "300")
    assert proc.returncode == 0, proc.stderr
    assert (csv.read_bytes(), csv.stat().st_mtime_ns, load_dataset(scale).fingerprint) == before


def test_rerun_with_fewer_images_removes_the_extra_links(tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert _make(out, "--n", "60").returncode == 0
    assert _make(out, "--n", "20", "--seed", "3").returncode == 0
    ds = load_dataset(out)
    assert ds.problems == [] and (ds.meta["split"] == "train").sum() == 20
    assert len(list((out / "boneage-training-dataset").iterdir())) == 20


def test_refuses_a_folder_that_is_not_a_scale_dataset(tmp_path: Path) -> None:
    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "boneage-training-dataset.csv").write_text("id,boneage,male\n1,10,True\n")
    proc = _make(mine, "--n", "5")
    assert proc.returncode == 2 and "refusing" in proc.stderr
    assert os.listdir(mine) == ["boneage-training-dataset.csv"]
    assert (mine / "boneage-training-dataset.csv").read_text() == "id,boneage,male\n1,10,True\n"
