"""Embeddings: shapes and alignment, on-disk reuse (asserted, not timed), keys that change
with the model, the data and the preprocessing; on the demo and on real thumbnails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import h2a.analysis.embeddings as E
from h2a.data.datasets import load_dataset
from h2a.data.preprocess import PreprocessConfig

SMALL = PreprocessConfig(size=64)


@pytest.fixture(scope="module")
def small_demo(demo_dir: Path, tmp_path_factory) -> Path:
    """60 demo images (symlinks) with their labels: enough to test, cheap to embed often."""
    import pandas as pd

    root = tmp_path_factory.mktemp("demo60")
    (root / "boneage-training-dataset").mkdir()
    labels = pd.read_csv(demo_dir / "boneage-training-dataset.csv").head(60)
    labels.to_csv(root / "boneage-training-dataset.csv", index=False)
    for i in labels["id"]:
        os.symlink(demo_dir / "boneage-training-dataset" / f"{i}.png", root / "boneage-training-dataset" / f"{i}.png")
    return root


class _Counter:
    """Wraps embed_arrays to count the images that really went through a model."""

    def __init__(self, monkeypatch) -> None:
        self.images = 0
        real = E.embed_arrays

        def counting(model, images, *a, **kw):
            self.images += len(images)
            return real(model, images, *a, **kw)

        monkeypatch.setattr(E, "embed_arrays", counting)


def test_pretrained_embeddings_are_aligned_and_reused(small_demo: Path, monkeypatch) -> None:
    ds = load_dataset(small_demo)
    count = _Counter(monkeypatch)
    seen: list[tuple[int, int, str]] = []
    emb = E.compute_embeddings(ds, "pretrained", preprocess=SMALL, batch_size=25,
                               progress=lambda d, t, m: seen.append((d, t, m)))
    n = len(ds.with_images())
    assert emb.X.shape == (n, 1280) and emb.X.dtype == np.float32 and np.isfinite(emb.X).all()
    assert emb.from_cache is False and count.images == n
    assert any("embedding" in m for _, _, m in seen) and seen[-1][0] == seen[-1][1] == n
    assert emb.source == "pretrained:efficientnet_lite0" and emb.info["n"] == n
    # rows line up with the dataset's own labels
    meta = ds.with_images().reset_index(drop=True)
    assert emb.ids == meta["id"].astype(str).tolist()
    np.testing.assert_array_equal(emb.boneage, meta["boneage"].to_numpy(dtype=float))
    np.testing.assert_array_equal(emb.male, meta["male"].astype(float).to_numpy())
    assert emb.X.std(axis=0).mean() > 0  # images differ, so do their vectors

    again = E.compute_embeddings(ds, "pretrained", preprocess=SMALL)
    assert again.from_cache is True and count.images == n  # nothing went through the model again
    assert again.key == emb.key and again.ids == emb.ids
    np.testing.assert_array_equal(again.X, emb.X)
    assert again.meta["male"].dtype == "boolean"

    other = E.compute_embeddings(ds, "pretrained", preprocess=PreprocessConfig(size=64, contrast="clahe"))
    assert other.from_cache is False and other.key != emb.key and count.images == 2 * n
    # augmentation settings do not change embeddings, so they share the key
    assert E.compute_embeddings(ds, "pretrained", preprocess=PreprocessConfig(size=64, rotation=0.0)).from_cache

    forced = E.compute_embeddings(ds, "pretrained", preprocess=SMALL, force=True)
    assert forced.from_cache is False
    np.testing.assert_allclose(forced.X, emb.X, rtol=1e-4, atol=1e-5)  # deterministic model


def test_a_half_written_store_is_ignored(small_demo: Path) -> None:
    ds = load_dataset(small_demo)
    emb = E.compute_embeddings(ds, "pretrained", preprocess=SMALL)
    (emb.path / "X.npy").write_bytes(b"garbage")
    assert E.load_embeddings(emb.path) is None
    fresh = E.compute_embeddings(ds, "pretrained", preprocess=SMALL)
    assert fresh.from_cache is False and fresh.X.shape == emb.X.shape


def test_run_embeddings_follow_the_model_file(small_demo: Path, workspace: Path) -> None:
    from h2a.run import safe_load
    from tests.test_sex import make_sex_run

    tiny_run = make_sex_run(small_demo, workspace, name="tiny-sex-60", epochs=1)
    ds = load_dataset(small_demo)
    emb = E.compute_embeddings(ds, str(tiny_run))
    assert emb.source == f"run:{tiny_run.name}"
    assert emb.info["preprocess"]["size"] == 64  # the run's own preprocessing
    assert emb.X.shape[0] == len(ds.with_images()) and emb.dim > 0
    assert E.compute_embeddings(ds, tiny_run.name).from_cache  # a run name works as well as a path

    copy = workspace / "models" / f"{tiny_run.name}-changed"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(tiny_run, copy)
    state = safe_load(copy / "model.pt")
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.5
    torch.save(state, copy / "model.pt")
    changed = E.compute_embeddings(ds, str(copy))
    assert changed.from_cache is False and changed.key != emb.key
    assert not np.allclose(changed.X, emb.X)
    with pytest.raises(FileNotFoundError):
        E.compute_embeddings(ds, "no-such-run")


def test_real_thumbnails(thumbs_dir: Path, tmp_path: Path) -> None:
    """A 40-image symlink subset of the real RSNA thumbnails."""
    import pandas as pd

    labels = pd.read_csv(thumbs_dir / "boneage-training-dataset.csv").head(40)
    root = tmp_path / "rsna-subset"
    (root / "boneage-training-dataset").mkdir(parents=True)
    labels.to_csv(root / "boneage-training-dataset.csv", index=False)
    for i in labels["id"]:
        os.symlink(thumbs_dir / "boneage-training-dataset" / f"{i}.png", root / "boneage-training-dataset" / f"{i}.png")
    ds = load_dataset(root)
    emb = E.compute_embeddings(ds, "pretrained", preprocess=SMALL)
    assert emb.X.shape == (40, 1280) and np.isfinite(emb.X).all()
    assert emb.ids == [str(i) for i in labels["id"]]
    np.testing.assert_array_equal(emb.male, labels["male"].astype(float).to_numpy())
    assert E.compute_embeddings(ds, "pretrained", preprocess=SMALL).from_cache


def test_bf16_embeddings_are_stored_apart_and_close(small_demo: Path) -> None:
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 support")
    from h2a.device import native_cpu_bf16

    ds = load_dataset(small_demo)
    fp32 = E.compute_embeddings(ds, "pretrained", preprocess=SMALL, device="cpu", amp="off")
    bf16 = E.compute_embeddings(ds, "pretrained", preprocess=SMALL, device="cpu", amp="bf16")
    assert bf16.key != fp32.key and bf16.info["precision"] == "bf16" and fp32.info["precision"] == "fp32"
    # auto: bf16 where the CPU has it natively (AMX / AVX512-BF16), float32 elsewhere
    auto = E.compute_embeddings(ds, "pretrained", preprocess=SMALL, device="cpu")
    assert auto.key == (bf16.key if native_cpu_bf16()[0] else fp32.key) and auto.from_cache  # stored apart, reused
    cos = (fp32.X * bf16.X).sum(1) / (np.linalg.norm(fp32.X, axis=1) * np.linalg.norm(bf16.X, axis=1) + 1e-9)
    assert cos.min() > 0.97 and not np.array_equal(fp32.X, bf16.X)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_embeddings_match_cpu(demo_dir: Path) -> None:
    ds = load_dataset(demo_dir)
    cpu = E.compute_embeddings(ds, "pretrained", preprocess=SMALL, device="cpu")
    gpu = E.compute_embeddings(ds, "pretrained", preprocess=SMALL, device="cuda", force=True)
    assert "cuda" in gpu.info["device"]
    cos = (cpu.X * gpu.X).sum(1) / (np.linalg.norm(cpu.X, axis=1) * np.linalg.norm(gpu.X, axis=1) + 1e-9)
    assert cos.min() > 0.98  # bf16 autocast: close, not equal
