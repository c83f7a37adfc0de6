"""Tests for the synthetic demo dataset (h2a.data.demo).

The signal tests are real checks, not smoke tests: a held-out regression must recover
bone age from 64 px pixels, and the same pipeline on shuffled labels must not.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from h2a.data import demo
from h2a.data.demo import DEMO_MARKER, ensure_demo, generate_demo, is_synthetic, render_hand

N = 30
SEED = 3


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same small dataset generated serially and with two worker processes."""
    base = tmp_path_factory.mktemp("demo")
    serial = generate_demo(base / "serial", n=N, seed=SEED, workers=1)
    parallel = generate_demo(base / "parallel", n=N, seed=SEED, workers=2)
    return serial, parallel


# ---------------------------------------------------------------------------- render


def test_render_is_deterministic_and_seed_dependent() -> None:
    a = render_hand(100.0, True, 5)
    b = render_hand(100.0, True, 5)
    c = render_hand(100.0, True, 6)
    assert a.dtype == np.uint8 and a.ndim == 2
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    H, W = a.shape
    assert 256 <= H <= 320 and 0.7 * H <= W <= 0.9 * H
    assert render_hand(30.0, False, 1, size=(200, 150)).shape == (200, 150)


def test_dark_background_bright_bones() -> None:
    for k in range(12):
        img = render_hand(float(10 + 18 * k), k % 2 == 0, 100 + k).astype(np.float32)
        H, W = img.shape
        ph, pw = H // 12, W // 12
        corners = [img[:ph, :pw], img[:ph, -pw:], img[-ph:, :pw], img[-ph:, -pw:]]
        centre = img[H // 3: 2 * H // 3, W // 3: 2 * W // 3]
        assert min(c.mean() for c in corners) < centre.mean() - 20
        # bones are the brightest structures: well above the soft-tissue level
        assert np.percentile(centre, 99) > np.median(centre) + 30


def _pixels64(ages: np.ndarray, male: np.ndarray, seed0: int) -> np.ndarray:
    """64 px squashed thumbnails, each stretched to its own 2nd-99.5th percentile
    (per-image windowing, as any preprocessing would do against exposure variation)."""
    X = np.stack([
        cv2.resize(render_hand(float(a), bool(m), seed0 + i), (64, 64), interpolation=cv2.INTER_AREA)
        .astype(np.float32).ravel()
        for i, (a, m) in enumerate(zip(ages, male))
    ])
    lo = np.percentile(X, 2, axis=1, keepdims=True)
    hi = np.percentile(X, 99.5, axis=1, keepdims=True)
    return (X - lo) / np.maximum(hi - lo, 1.0)


def _ridge_predict(X: np.ndarray, y: np.ndarray, Xt: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    """Ridge regression in its dual form (n x n solve: cheap with 4096 pixel features)."""
    mu, ym = X.mean(0), y.mean()
    Xc = X - mu
    coef = np.linalg.solve(Xc @ Xc.T + alpha * np.eye(len(X)), y - ym)
    return (Xt - mu) @ (Xc.T @ coef) + ym


def test_bone_age_is_learnable_from_64px_pixels() -> None:
    rng = np.random.default_rng(0)
    n_train, n_test = 120, 40
    ages = rng.uniform(1, 228, n_train + n_test)
    male = rng.random(n_train + n_test) < 0.5
    X = _pixels64(ages, male, 5000)
    tr, te = slice(0, n_train), slice(n_train, None)
    pred = _ridge_predict(X[tr], ages[tr], X[te])
    r = np.corrcoef(pred, ages[te])[0, 1]
    assert r > 0.8, f"held-out correlation {r:.2f}"
    # the same pipeline has no power on shuffled labels: the signal is in the pixels
    shuffled = rng.permutation(ages[tr])
    r0 = np.corrcoef(_ridge_predict(X[tr], shuffled, X[te]), ages[te])[0, 1]
    assert r0 < r - 0.3, f"shuffled-label correlation {r0:.2f} vs real {r:.2f}"


def _foreground_fraction(img: np.ndarray) -> float:
    """Share of pixels clearly above the background: the hand + forearm silhouette."""
    blur = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 2.0)
    lo, hi = np.percentile(blur, 10), np.percentile(blur, 99.5)
    return float((blur > lo + 0.15 * (hi - lo)).mean())


def test_boys_have_larger_hands_after_13_years() -> None:
    """Same seed (identical nuisance) for a boy and a girl: boys' hands are larger, and
    the gap widens after puberty."""
    def ratios(age: float) -> np.ndarray:
        return np.array([
            _foreground_fraction(render_hand(age, True, s, size=(288, 240)))
            / _foreground_fraction(render_hand(age, False, s, size=(288, 240)))
            for s in range(300, 308)
        ])

    teen = np.concatenate([ratios(a) for a in (170.0, 190.0, 210.0)])
    child = ratios(60.0)
    assert (teen > 1.0).all() and teen.mean() > 1.04, teen
    assert teen.mean() > child.mean() + 0.02, (teen.mean(), child.mean())


def test_sex_size_signal_survives_jitter() -> None:
    """Independent images (own size/pose/exposure jitter): boys still larger on average."""
    areas: dict[bool, list[float]] = {True: [], False: []}
    for k, age in enumerate(np.repeat([170.0, 190.0, 210.0], 14)):
        for male in (True, False):
            img = render_hand(age, male, 9000 + 2 * k + int(male), size=(288, 240))
            areas[male].append(_foreground_fraction(img))
    # medians: a bright collimation border occasionally inflates single images
    boys, girls = np.median(areas[True]), np.median(areas[False])
    assert boys > girls * 1.02, f"boys {boys:.3f} vs girls {girls:.3f}"


# -------------------------------------------------------------------------- dataset


def test_layout_columns_and_ids(generated: tuple[Path, Path]) -> None:
    root, _ = generated
    train = pd.read_csv(root / "boneage-training-dataset.csv")
    val = pd.read_csv(root / "boneage-validation-dataset.csv")
    assert list(train.columns) == ["id", "boneage", "male"]
    assert list(val.columns) == ["Image ID", "male", "Bone Age (months)"]
    assert train["id"].dtype.kind == "i" and train["boneage"].dtype.kind == "i"
    assert train["male"].dtype == bool and val["male"].dtype == bool
    assert val["Image ID"].dtype.kind == "i" and val["Bone Age (months)"].dtype.kind == "i"
    text = (root / "boneage-training-dataset.csv").read_text()
    assert ",True\n" in text or ",False\n" in text  # Kaggle spelling of the sex column
    ids = sorted(train["id"].tolist() + val["Image ID"].tolist())
    assert ids == list(range(1, N + 1))
    assert len(val) == round(N * 0.15)
    ages = pd.concat([train["boneage"], val["Bone Age (months)"]])
    assert ages.between(1, 228).all()
    for i in train["id"]:
        assert (root / "boneage-training-dataset" / f"{i}.png").is_file()
    for i in val["Image ID"]:
        assert (root / "boneage-validation-dataset" / f"{i}.png").is_file()
    assert len(list((root / "boneage-training-dataset").iterdir())) == len(train)
    img = cv2.imread(str(root / "boneage-training-dataset" / f"{train['id'].iloc[0]}.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.ndim == 2


def test_marker_and_is_synthetic(generated: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = generated
    assert is_synthetic(root)
    text = (root / DEMO_MARKER).read_text()
    assert "SYNTHETIC" in text
    assert f'"n": {N}' in text and f'"seed": {SEED}' in text
    assert not is_synthetic(tmp_path)
    assert not any(p.name.startswith(".") for p in root.parent.iterdir())  # no temp leftovers


def test_identical_regardless_of_workers(generated: tuple[Path, Path]) -> None:
    serial, parallel = generated
    for name in ("boneage-training-dataset.csv", "boneage-validation-dataset.csv", DEMO_MARKER):
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()
    for folder in ("boneage-training-dataset", "boneage-validation-dataset"):
        files = sorted(p.name for p in (serial / folder).iterdir())
        assert files == sorted(p.name for p in (parallel / folder).iterdir())
        for f in files:
            a = cv2.imread(str(serial / folder / f), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(parallel / folder / f), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(a, b), f


def test_idempotent_second_call_does_no_work(generated: tuple[Path, Path]) -> None:
    root, _ = generated
    stamps = {p: p.stat().st_mtime_ns for p in [root / DEMO_MARKER, root / "boneage-training-dataset.csv"]}
    calls: list[tuple[int, int, str]] = []
    assert generate_demo(root, n=N, seed=SEED, workers=2, progress=lambda d, t, m: calls.append((d, t, m))) == root
    assert calls == [(N, N, calls[0][2])]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_different_seed_gives_different_data(tmp_path: Path, generated: tuple[Path, Path]) -> None:
    root, _ = generated
    other = generate_demo(tmp_path / "other", n=N, seed=SEED + 1, workers=1)
    assert (other / "boneage-training-dataset.csv").read_bytes() != (
        root / "boneage-training-dataset.csv").read_bytes()


def test_progress_reported_per_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    generate_demo(tmp_path / "p", n=6, seed=0, workers=1, progress=lambda d, t, m: calls.append((d, t)))
    assert calls[-1] == (6, 6)
    assert [d for d, _ in calls] == list(range(0, 7))


def test_refuses_to_overwrite_real_data(tmp_path: Path) -> None:
    out = tmp_path / "real"
    out.mkdir()
    (out / "boneage-training-dataset.csv").write_text("id,boneage,male\n")
    with pytest.raises(FileExistsError):
        generate_demo(out, n=4, seed=0, workers=1)
    assert (out / "boneage-training-dataset.csv").read_text() == "id,boneage,male\n"


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(job: tuple) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(demo, "_render_job", boom)
    with pytest.raises(OSError):
        generate_demo(tmp_path / "x", n=4, seed=0, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_ensure_demo_uses_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2A_WORKSPACE", str(tmp_path))
    path = ensure_demo(n=8, seed=2)
    assert path == tmp_path / "demo" / "rsna-synthetic-n8-s2"
    assert is_synthetic(path)
    mtime = os.stat(path / DEMO_MARKER).st_mtime_ns
    assert ensure_demo(n=8, seed=2) == path
    assert os.stat(path / DEMO_MARKER).st_mtime_ns == mtime
