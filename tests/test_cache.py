"""Tensor cache: build once, reuse, align with prepare_file, survive bad files and kills."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from h2a.data.cache import CachedImageDataset, TensorCache, build_cache, cache_dir_for, open_cache
from h2a.data.datasets import load_dataset
from h2a.data.preprocess import PreprocessConfig, prepare_file
from h2a.data.transforms import augmentation, input_norm, to_input

FULLRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsna-fullres"
CORRUPT_ID = "9999"
MISSING_ID = "10000"
CFG = PreprocessConfig(size=64, resize="pad", contrast="clahe")

# (height, width): tall, wide, square, tiny and larger than the cache size
SHAPES = [(120, 90), (90, 120), (64, 64), (8, 8), (300, 220), (47, 81), (200, 100),
          (100, 200), (33, 250), (250, 33), (128, 96), (96, 128), (72, 72), (150, 110),
          (110, 150), (40, 30), (30, 40), (256, 192), (192, 256), (65, 63)]


def _hand_like(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + 120 * np.exp(-(((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2))
    img += rng.normal(0, 8, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_kaggle_folder(root: Path) -> Path:
    """~20 PNGs of varied sizes (one 16-bit), 1 corrupt file, 1 row whose image is missing."""
    img_dir = root / "boneage-training-dataset"
    img_dir.mkdir(parents=True)
    rows = []
    for i, (h, w) in enumerate(SHAPES):
        ident = str(1000 + i)
        img = _hand_like(h, w, i)
        if i == 5:
            img = img.astype(np.uint16) * 257  # a 16-bit PNG among 8-bit ones
        assert cv2.imwrite(str(img_dir / f"{ident}.png"), img)
        rows.append((ident, 12 + 9 * i, i % 2 == 0))
    (img_dir / f"{CORRUPT_ID}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a picture" * 10)
    rows.append((CORRUPT_ID, 100, True))
    rows.append((MISSING_ID, 50, False))  # listed in the CSV, no file
    pd.DataFrame(rows, columns=["id", "boneage", "male"]).to_csv(
        root / "boneage-training-dataset.csv", index=False)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_kaggle_folder(tmp_path_factory.mktemp("kaggle") / "hands")


@pytest.fixture(scope="module")
def ds(folder):
    return load_dataset(folder)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tensors")


@pytest.fixture(scope="module")
def built(ds, cache_root):
    calls: list[tuple[int, int, str]] = []
    cache = build_cache(ds, CFG, root=cache_root, workers=2,
                        progress=lambda d, t, m: calls.append((d, t, m)))
    return cache, calls


def _ids_with_path(ds) -> list[str]:
    m = ds.meta
    return [str(i) for i in m.loc[m["path"].notna(), "id"]]


# ---------------------------------------------------------------- building

def test_build_shape_ok_mask_and_errors(built, ds):
    cache, calls = built
    n = len(SHAPES) + 1
    assert cache.built_now
    assert len(cache) == n and cache.images.shape == (n, 64, 64) and cache.images.dtype == np.uint8
    assert cache.ids == _ids_with_path(ds) and MISSING_ID not in cache.ids
    bad = cache.ids.index(CORRUPT_ID)
    assert cache.ok.sum() == n - 1 and not cache.ok[bad]
    assert set(cache.errors) == {CORRUPT_ID}
    assert f"{CORRUPT_ID}.png" in cache.errors[CORRUPT_ID]
    assert (cache.images[bad] == 0).all()
    assert all(cache.images[i].any() for i in range(n) if i != bad)
    assert cache.fingerprint == ds.fingerprint and cache.config == CFG
    assert not cache.images.flags.writeable
    # progress: starts at 0, never goes back, ends complete
    done = [d for d, _, _ in calls]
    assert done[0] == 0 and done == sorted(done) and calls[-1][:2] == (n, n)
    assert cache.path == cache_dir_for(ds, CFG, root=cache.path.parent)
    assert sorted(p.name for p in cache.path.iterdir()) == ["images.u8", "index.json"]
    assert not [p for p in cache.path.parent.iterdir() if p.name.startswith(".")]


def test_rows_match_prepare_file_byte_for_byte(built, ds):
    cache, _ = built
    m = ds.meta[ds.meta["path"].notna()]
    for ident, path in zip(m["id"], m["path"]):
        if ident == CORRUPT_ID:
            continue
        row = cache.rows([ident])[0]
        assert np.array_equal(cache.images[row], prepare_file(path, CFG)), ident
    path = m.loc[m["id"] == "1004", "path"].iloc[0]
    from_bytes = prepare_file(Path(path).read_bytes(), CFG, name="1004.png")
    assert np.array_equal(from_bytes, cache.images[cache.rows(["1004"])[0]])


def test_rows_lookup_and_take(built):
    cache, _ = built
    rows = cache.rows(["1003", "1000", "1019"])
    assert rows.tolist() == [cache.ids.index("1003"), 0, cache.ids.index("1019")]
    assert np.array_equal(cache.take(rows), np.stack([cache.images[r] for r in rows]))
    with pytest.raises(KeyError, match=MISSING_ID):
        cache.rows(["1000", MISSING_ID])


def test_second_call_reuses_without_decoding(built, ds, folder, cache_root):
    cache, _ = built
    index = cache.path / "index.json"
    stamp = index.stat().st_mtime_ns
    calls = []
    again = build_cache(ds, CFG, root=cache_root, workers=2, progress=lambda *a: calls.append(a))
    assert not again.built_now and again.path == cache.path
    assert index.stat().st_mtime_ns == stamp
    assert calls == [(len(cache), len(cache), "tensor cache reused")]
    # augmentation / normalisation changes and a freshly indexed dataset reuse it too
    other = PreprocessConfig(size=64, resize="pad", contrast="clahe", flip=False,
                             rotation=0.0, normalize="per_image")
    reused = build_cache(load_dataset(folder), other, root=cache_root)
    assert not reused.built_now and reused.path == cache.path and reused.config == other
    assert np.array_equal(reused.images, cache.images)
    assert open_cache(ds, CFG, root=cache_root).path == cache.path


def test_other_deterministic_config_gets_another_dir(built, ds, cache_root):
    cache, _ = built
    cfg = PreprocessConfig(size=32, resize="crop")
    assert cache_dir_for(ds, cfg, cache_root) != cache.path
    assert open_cache(ds, cfg, root=cache_root) is None
    small = build_cache(ds, cfg, root=cache_root, workers=1)
    assert small.built_now and small.images.shape == (len(cache), 32, 32)
    assert open_cache(ds, cfg, root=cache_root) is not None


def test_one_or_two_workers_give_identical_caches(built, ds, tmp_path):
    cache, _ = built
    single = build_cache(ds, CFG, root=tmp_path, workers=1)
    assert single.built_now and single.path != cache.path
    assert np.array_equal(np.asarray(single.images), np.asarray(cache.images))
    assert np.array_equal(single.ok, cache.ok) and single.errors == cache.errors
    assert single.ids == cache.ids


def test_force_rebuilds_in_place(ds, tmp_path):
    cfg = PreprocessConfig(size=24)
    first = build_cache(ds, cfg, root=tmp_path, workers=1)
    again = build_cache(ds, cfg, root=tmp_path, workers=1, force=True)
    assert again.built_now and again.path == first.path
    assert np.array_equal(np.asarray(first.images), np.asarray(again.images))
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]


def test_half_written_or_killed_builds_are_never_trusted(ds, tmp_path):
    cfg = PreprocessConfig(size=24, contrast="hist_eq")
    final = cache_dir_for(ds, cfg, tmp_path)
    # a directory at the final name without index.json (e.g. copied by hand, truncated)
    final.mkdir(parents=True)
    (final / "images.u8").write_bytes(b"\x00" * 10)
    # a temp dir left by a build that was killed (its pid no longer exists)
    stale = tmp_path / f".tmp-{final.name}-p{2**22 + 12345}-deadbeef"
    stale.mkdir()
    (stale / "images.u8").write_bytes(b"\x00" * 10)
    assert open_cache(ds, cfg, root=tmp_path) is None
    cache = build_cache(ds, cfg, root=tmp_path, workers=1)
    assert cache.built_now and cache.images.shape == (len(SHAPES) + 1, 24, 24)
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
    # an index that does not match the images file is rejected too
    (final / "images.u8").write_bytes(b"\x00" * 10)
    assert open_cache(ds, cfg, root=tmp_path) is None


def test_changed_file_changes_fingerprint_and_dir(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    ds1 = load_dataset(copy)
    cfg = PreprocessConfig(size=16)
    first = build_cache(ds1, cfg, root=tmp_path / "t", workers=1)
    img = copy / "boneage-training-dataset" / "1000.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2 = load_dataset(copy)
    assert ds2.fingerprint != ds1.fingerprint
    second = build_cache(ds2, cfg, root=tmp_path / "t", workers=1)
    assert second.built_now and second.path != first.path


def test_dataset_without_images_gives_an_empty_cache(tmp_path):
    meta = pd.DataFrame({"id": ["a", "b"], "split": ["train"] * 2, "boneage": [1.0, 2.0],
                         "male": pd.array([True, None], dtype="boolean"), "path": [None, None]})
    fake = SimpleNamespace(name="empty set", fingerprint="0" * 16, root=tmp_path, meta=meta)
    cache = build_cache(fake, PreprocessConfig(size=16), root=tmp_path / "t")
    assert len(cache) == 0 and cache.images.shape == (0, 16, 16)
    assert not build_cache(fake, PreprocessConfig(size=16), root=tmp_path / "t").built_now
    assert cache.path.name.startswith("empty-set-000000000000-s16-")


# ---------------------------------------------------------------- torch side

def _training_dataset(cache, ds, transform=None) -> CachedImageDataset:
    m = ds.meta[ds.meta["path"].notna()].reset_index(drop=True)
    keep = m[m["id"].isin([i for i, ok in zip(cache.ids, cache.ok) if ok])]
    rows = cache.rows(keep["id"].tolist())
    return CachedImageDataset(cache, rows, keep["boneage"].to_numpy(), keep["male"].array,
                              transform=transform)


def test_cached_dataset_items(built, ds):
    cache, _ = built
    data = _training_dataset(cache, ds)
    assert len(data) == len(SHAPES)
    item = data[3]
    assert set(item) == {"image", "target", "sex", "row"}
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.uint8
    assert torch.equal(item["image"][0], torch.from_numpy(np.array(cache.images[item["row"]])))
    assert item["target"].dtype == torch.float32 and item["target"].item() == 12 + 9 * 3
    assert item["sex"].item() == 0.0  # id 1003 is female
    aug = _training_dataset(cache, ds, transform=augmentation(CFG))
    torch.manual_seed(0)
    out = aug[3]["image"]
    assert out.shape == (1, 64, 64) and out.dtype == torch.uint8
    unlabelled = CachedImageDataset(cache, np.array([0, 1]))
    assert torch.isnan(unlabelled[0]["target"]) and torch.isnan(unlabelled[0]["sex"])
    with pytest.raises(ValueError, match="targets has 1 values"):
        CachedImageDataset(cache, np.array([0, 1]), targets=np.array([1.0]))
    with pytest.raises(IndexError):
        CachedImageDataset(cache, np.array([len(cache)]))


def test_dataloader_batch_then_normalize(built, ds):
    cache, _ = built
    data = _training_dataset(cache, ds, transform=augmentation(CFG))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["image"].dtype == torch.uint8
    assert batch["target"].shape == (4,) and batch["target"].dtype == torch.float32
    assert batch["sex"].tolist() == [1.0, 0.0, 1.0, 0.0]
    x = to_input(batch["image"], input_norm("efficientnet_lite0", CFG))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.allclose(x, batch["image"].float() / 255 * 2 - 1)  # Lite0's weights want [-1, 1]


def test_pickling_sends_the_location_not_the_pixels(built, ds):
    cache, _ = built
    data = _training_dataset(cache, ds)
    blob = pickle.dumps(data)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    assert torch.equal(clone[5]["image"], data[5]["image"])
    cache_clone: TensorCache = pickle.loads(pickle.dumps(cache))
    assert np.array_equal(np.asarray(cache_clone.images), np.asarray(cache.images))


# ---------------------------------------------------------------- real radiographs

@pytest.mark.skipif(not (FULLRES / "boneage-training-dataset.csv").is_file(),
                    reason="real RSNA sample not present")
def test_real_fullres_sample_all_decode(tmp_path):
    real = load_dataset(FULLRES)
    cache = build_cache(real, PreprocessConfig(size=64), root=tmp_path, workers=2)
    n = int(real.meta["path"].notna().sum())
    assert n >= 50 and len(cache) == n and cache.images.shape == (n, 64, 64)
    assert cache.ok.all(), cache.errors
    means = np.asarray(cache.images).reshape(n, -1).mean(axis=1)
    assert (means > 5).all()  # every row holds a picture, not a blank


def test_a_crashing_worker_fails_clearly_and_leaves_no_half_cache(ds, tmp_path, monkeypatch):
    import h2a.data.cache as cache_mod

    monkeypatch.setattr(cache_mod, "_WORKER_CMD",
                        "import sys; sys.stderr.write('boom: out of memory\\n'); sys.exit(3)")
    cfg = PreprocessConfig(size=20)
    with pytest.raises(RuntimeError, match=r"(?s)worker stopped unexpectedly \(exit code 3\).*boom"):
        build_cache(ds, cfg, root=tmp_path, workers=2)
    assert list(tmp_path.iterdir()) == []
    assert open_cache(ds, cfg, root=tmp_path) is None


def test_not_enough_disk_space_is_said_before_decoding(ds, tmp_path, monkeypatch):
    import h2a.data.cache as cache_mod

    monkeypatch.setattr(cache_mod.shutil, "disk_usage",
                        lambda p: SimpleNamespace(total=10**9, used=10**9, free=1000))
    with pytest.raises(cache_mod.CacheError, match="Not enough disk space.*smaller image size"):
        build_cache(ds, PreprocessConfig(size=512), root=tmp_path)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------- throughput (issue 18)

def test_build_reports_images_and_megabytes_per_second(built, ds, folder, cache_root):
    """The build says how fast it read: in index.json (so a reused cache still knows),
    and in its progress messages (the CLI and pages show them)."""
    cache, calls = built
    m = ds.meta[ds.meta["path"].notna()]
    input_bytes = sum(Path(p).stat().st_size for p in m["path"])
    info = cache.info
    assert info["input_bytes"] == input_bytes
    assert info["images_per_s"] > 0 and info["mb_per_s"] > 0
    # both rates describe the same run: images/s over MB/s is images per MB read
    assert info["images_per_s"] / info["mb_per_s"] == pytest.approx(len(cache) / (input_bytes / 1e6), rel=0.05)
    assert "images/s" in calls[-1][2] and "MB/s" in calls[-1][2]
    mid = [msg for d, _, msg in calls if 0 < d < len(cache)]
    assert all("images/s" in msg and "MB/s" in msg for msg in mid)
    reused = build_cache(ds, CFG, root=cache_root, workers=2)
    assert not reused.built_now and reused.info["images_per_s"] == info["images_per_s"]
