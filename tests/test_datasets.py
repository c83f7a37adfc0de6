"""Dataset discovery and validation: every problem reported, every good row kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from h2a.data import datasets
from h2a.data.datasets import DatasetError, load_dataset, scan_headers, stratified_split


def _png(path: Path, w: int = 40, h: int = 50, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    """Kaggle train CSV with bad rows, an official validation CSV and a test list."""
    root = tmp_path / "messy"
    img = root / "boneage-training-dataset"
    for i in (1, 2, 3, 4, 5, 6, 7, 9):
        _png(img / f"{i}.png", w=30 + i, h=40 + i)
    (img / "8.png").write_bytes(b"")  # zero-byte image: unreadable
    (img / "9.png").write_bytes(b"this is not a png")
    (root / "boneage-training-dataset.csv").write_text(
        "id,boneage,male\n"
        "1,120,True\n"
        "2,36,False\n"
        "2,40,False\n"        # duplicate id
        "3,abc,True\n"        # non-numeric age
        "4,300,False\n"       # out of range
        "5,60,maybe\n"        # unknown sex
        "6,180,True\n"
        "7,12,False\n"
        "8,100,True\n"        # unreadable (zero bytes)
        "9,90,False\n"        # unreadable (text)
        "10,50,True\n"        # missing image
    )
    val = root / "boneage-validation-dataset"
    for i in (101, 102):
        _png(val / f"{i}.png")
    (root / "boneage-validation-dataset.csv").write_text(
        "Image ID,male,Bone Age (months)\n101,True,150\n102,False,30\n")
    tst = root / "boneage-test-dataset"
    _png(tst / "201.png")
    (root / "boneage-test-dataset.csv").write_text("Case ID,Sex\n201,M\n202,F\n")
    return root


def test_good_rows_load_and_every_problem_is_listed(messy: Path) -> None:
    ds = load_dataset(messy)
    meta = ds.meta
    assert set(ds.splits) == {"train", "validation", "test"}
    train = meta[meta["split"] == "train"]
    assert sorted(train["id"], key=int) == ["1", "2", "6", "7", "8", "9", "10"]
    assert train.set_index("id").loc["2", "boneage"] == 36  # first of the duplicates kept
    assert train.set_index("id").loc["10", "path"] is None
    problems = {p.item: p.problem for p in ds.problems}
    text = "\n".join(f"{k}: {v}" for k, v in problems.items())
    assert "line 4 (id 2)" in text and "duplicate" in text
    assert "line 5 (id 3)" in text and "not a number" in text
    assert "line 6 (id 4)" in text and "outside 0-240" in text
    assert "line 7 (id 5)" in text and "unknown sex" in text
    assert "10.png not found" in text
    assert "202.png not found" in text
    # test list: sex only, no age
    test = meta[meta["split"] == "test"].set_index("id")
    assert test.loc["201", "male"] == True  # noqa: E712
    assert np.isnan(test.loc["201", "boneage"])
    assert meta[meta["split"] == "validation"].set_index("id").loc["102", "boneage"] == 30


def test_unreadable_images_found_by_header_scan(messy: Path, tmp_path: Path) -> None:
    ds = load_dataset(messy)
    headers = scan_headers(ds, db_path=tmp_path / "h.sqlite")
    by_id = headers.join(ds.meta["id"]).set_index("id")
    assert by_id.loc["1", "width"] == 31 and by_id.loc["1", "height"] == 41
    assert "8.png" in by_id.loc["8", "error"]
    assert "9.png" in by_id.loc["9", "error"]
    unreadable = [p for p in ds.problems if p.problem.startswith("unreadable image")]
    assert {p.item for p in unreadable} == {"8.png", "9.png"}
    # a second scan does not duplicate the problems
    scan_headers(ds, db_path=tmp_path / "h.sqlite")
    assert len([p for p in ds.problems if p.problem.startswith("unreadable image")]) == 2


def test_header_scan_is_cached_on_disk(messy: Path, tmp_path: Path, monkeypatch) -> None:
    db = tmp_path / "headers.sqlite"
    ds = load_dataset(messy)
    first = scan_headers(ds, db_path=db)
    calls = []
    real = datasets._header_facts
    monkeypatch.setattr(datasets, "_header_facts", lambda p: calls.append(p) or real(p))
    again = scan_headers(load_dataset(messy), db_path=db)
    assert calls == []
    pd.testing.assert_frame_equal(first, again)
    # touching one file (new size) re-reads exactly that one
    _png(messy / "boneage-training-dataset" / "1.png", w=77, h=66)
    third = scan_headers(load_dataset(messy), db_path=db)
    assert len(calls) == 1 and calls[0].endswith("1.png")
    assert third.join(ds.meta["id"]).set_index("id").loc["1", "width"] == 77


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no label CSV found"),
        ({"labels.csv": "name,age\na,1\n"}, "no label CSV with known columns"),
    ],
)
def test_unusable_folder_raises_one_clear_error(tmp_path: Path, files: dict, message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_fingerprint_changes_with_data(messy: Path) -> None:
    a = load_dataset(messy).fingerprint
    assert load_dataset(messy).fingerprint == a
    _png(messy / "boneage-training-dataset" / "2.png", w=99)
    assert load_dataset(messy).fingerprint != a


def test_stratified_split_balances_sex_and_age() -> None:
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"boneage": rng.integers(1, 229, 1000).astype(float),
                         "male": pd.array(rng.random(1000) < 0.54, dtype="boolean")})
    train, val = stratified_split(meta, val_fraction=0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000
    assert abs(len(val) - 200) <= 10
    assert abs(meta["male"].iloc[val].mean() - meta["male"].mean()) < 0.03
    assert abs(meta["boneage"].iloc[val].mean() - meta["boneage"].mean()) < 5
    again, _ = stratified_split(meta, val_fraction=0.2, seed=3)
    assert np.array_equal(train, again)


def test_real_thumbnails_match_their_csv(thumbs_dir: Path) -> None:
    ds = load_dataset(thumbs_dir)
    csv = pd.read_csv(thumbs_dir / "boneage-training-dataset.csv")
    assert len(ds.meta) == len(csv)
    assert ds.meta["path"].notna().all()
    assert ds.problems == []
    assert ds.meta["boneage"].sum() == csv["boneage"].sum()
    assert int(ds.meta["male"].sum()) == int(csv["male"].sum())


def test_labels_only_folder_loads_both_official_lists(labels_dir: Path) -> None:
    ds = load_dataset(labels_dir)
    counts = ds.meta["split"].value_counts()
    assert counts["validation"] == 1425 and counts["test"] == 200
    assert ds.meta["path"].isna().all()
    assert len(ds.problems) == 1625  # every row: image not found, labels kept


def test_paths_by_id_is_one_cached_map_that_prefers_the_row_with_an_image(tmp_path: Path) -> None:
    root = tmp_path / "twice"
    _png(root / "imgs" / "1.png")
    _png(root / "imgs" / "3.png")
    # id 2 has no image anywhere; id 3 is in both CSVs with one image file
    (root / "boneage-training-dataset.csv").write_text("id,boneage,male\n1,120,True\n2,36,False\n3,50,True\n")
    (root / "boneage-validation-dataset.csv").write_text("Image ID,male,Bone Age (months)\n3,True,50\n4,False,30\n")
    ds = load_dataset(root)
    assert (ds.meta["id"] == "3").sum() == 2  # the same id in two splits
    paths = ds.paths_by_id()
    assert paths.index.is_unique and list(paths.index) == ["1", "2", "3", "4"]  # CSV order, one entry per id
    assert paths["1"] == str((root / "imgs" / "1.png").resolve())
    assert paths["3"] == str((root / "imgs" / "3.png").resolve())
    assert paths["2"] is None and paths["4"] is None
    assert ds.paths_by_id() is paths  # built once per Dataset
    assert ds.path_of(3) == paths["3"] and ds.path_of("1") == paths["1"]  # ids as int or str
    assert ds.path_of("2") is None and ds.path_of("no-such-id") is None


def test_paths_by_id_prefers_an_image_when_the_first_row_has_none() -> None:
    meta = pd.DataFrame({"id": ["7", "7", "8"], "split": ["train", "validation", "train"],
                         "boneage": [1.0, 1.0, 2.0], "male": [True, True, False],
                         "path": [None, "/x/7.png", "/x/8.png"], "source": ["a", "b", "a"], "line": [2, 2, 3]})
    ds = datasets.Dataset(root=Path("/x"), meta=meta)
    assert ds.paths_by_id().to_dict() == {"7": "/x/7.png", "8": "/x/8.png"}


def test_header_frame_matches_the_cell_by_cell_table(messy: Path, tmp_path: Path) -> None:
    """scan_headers builds its table from records (fast at 12,611 images); the frame is the
    one the former cell-by-cell fill gave: same index, columns, dtypes and values."""
    ds = load_dataset(messy)
    got = scan_headers(ds, db_path=tmp_path / "h.sqlite")
    want = pd.DataFrame(index=ds.meta.index, columns=datasets.HEADER_COLUMNS, dtype=object)
    for idx, path in ds.meta.loc[ds.meta["path"].notna(), "path"].items():
        facts = datasets._header_facts(path)
        for col in datasets.HEADER_COLUMNS:
            want.at[idx, col] = facts.get(col)
    for col in ("width", "height", "channels", "bit_depth", "file_size"):
        want[col] = pd.to_numeric(want[col], errors="coerce")
    assert ds.meta["path"].isna().any(), "the fixture has rows without an image"
    pd.testing.assert_frame_equal(got, want)
