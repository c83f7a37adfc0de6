"""ONNX export: the graph's signature (dynamic batch, sex always an input), its outputs
against PyTorch, re-export when the weights change, and ``h2a export`` (JSON, errors)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from h2a.cli import export as export_cli
from h2a.cli.common import CliError
from h2a.data.transforms import array_input
from h2a.inference.evaluate import split_images
from h2a.inference.loading import load_run
from h2a.inference.onnx_export import OnnxRunner, ensure_onnx, export_onnx, onnx_path

pytest.importorskip("onnxruntime")

TOL = 1e-3  # raw units (standardised bone age / logit)


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory, one_torch_thread) -> Path:
    """A copy of the shared tiny run (sex branch), so model.onnx never lands in other tests' folder."""
    d = tmp_path_factory.mktemp("onnx") / "tiny-boneage"
    shutil.copytree(tiny_run, d)
    return d


@pytest.fixture(scope="module")
def exported(run_dir) -> dict:
    return export_onnx(run_dir)


@pytest.fixture(scope="module")
def no_sex_run(demo_dir, tmp_path_factory, one_torch_thread) -> Path:
    """A one-epoch tiny run trained without the sex input."""
    from h2a.data.preprocess import PreprocessConfig
    from h2a.engine.config import TrainConfig
    from h2a.engine.trainer import train

    out = tmp_path_factory.mktemp("onnx-nosex") / "tiny-nosex"
    cfg = TrainConfig(data=str(demo_dir), out=str(out), arch="tiny_cnn", pretrained=False, use_sex=False,
                      preprocess=PreprocessConfig(size=64).to_dict(), epochs=1, batch_size=32,
                      max_train_images=64, workers=0, seed=0)
    train(cfg, log=lambda m: None)
    return out


def _torch_outputs(run, x: torch.Tensor, sex: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        fmap = run.model.forward_features(x)
        raw = run.model.forward_head(fmap, sex if run.model.use_sex else None)
        return raw.numpy(), run.model.forward_head(fmap, pre_logits=True).numpy()


def test_export_writes_a_checked_graph(exported, run_dir) -> None:
    assert Path(exported["path"]) == onnx_path(run_dir) == run_dir / "model.onnx"
    assert Path(exported["path"]).stat().st_size == exported["size_bytes"] > 0
    assert exported["opset"] >= 17
    assert exported["inputs"] == ["image", "sex"] and exported["outputs"] == ["raw", "embedding"]
    assert exported["max_abs_diff_raw"] < TOL and exported["max_abs_diff_embedding"] < TOL
    assert not list(run_dir.glob(".model.onnx.*"))  # no temp file left behind


@pytest.mark.parametrize("n", [1, 5])
def test_dynamic_batch_equals_pytorch(exported, run_dir, n: int) -> None:
    run = load_run(run_dir)
    runner = OnnxRunner(exported["path"], threads=1)
    size = run.preprocess.size
    assert runner.image_shape == (None, 1, size, size)
    x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(n))
    sex = (torch.arange(n) % 2).float()
    raw, emb = runner.forward(x, sex.numpy())
    ref_raw, ref_emb = _torch_outputs(run, x, sex)
    assert raw.shape == (n,) and emb.shape == (n, run.model.num_features)
    np.testing.assert_allclose(raw, ref_raw, atol=TOL)
    np.testing.assert_allclose(emb, ref_emb, atol=TOL)


def test_months_equal_pytorch_on_validation_images(exported, run_dir) -> None:
    """The real path: cached uint8 images -> array_input -> graph -> run.to_output (months)."""
    run = load_run(run_dir)
    images = split_images(run, None, "validation")
    u8 = images.cache.take(images.rows[:32])
    sex = images.labelled["male"].astype(bool).to_numpy()[:32].astype(np.float32)
    x = array_input(u8, run.norm, run.device)
    raw, _ = OnnxRunner(exported["path"], threads=1).forward(x, sex)
    ref, _ = _torch_outputs(run, x, torch.from_numpy(sex))
    assert np.abs(run.to_output(raw) - run.to_output(ref)).max() < 0.05


def test_sex_input_changes_the_answer(exported) -> None:
    runner = OnnxRunner(exported["path"], threads=1)
    assert runner.use_sex and runner.meta["h2a.task"] == "boneage"
    x = np.random.default_rng(0).standard_normal((4, *runner.image_shape[1:])).astype(np.float32)
    male, _ = runner.forward(x, np.ones(4, np.float32))
    female, _ = runner.forward(x, np.zeros(4, np.float32))
    assert np.abs(male - female).max() > 1e-4
    with pytest.raises(ValueError, match="pass sex"):
        runner.forward(x, None)
    with pytest.raises(ValueError, match="3 values for a batch of 4"):
        runner.forward(x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="expected images of shape"):
        runner.forward(x[:, :, :10], np.ones(4, np.float32))


def test_model_without_sex_keeps_the_same_signature(no_sex_run, tmp_path) -> None:
    result = export_onnx(no_sex_run, tmp_path / "nosex.onnx")
    assert result["inputs"] == ["image", "sex"] and not result["use_sex"]
    assert result["max_abs_diff_raw"] < TOL
    runner = OnnxRunner(result["path"], threads=1)
    x = np.random.default_rng(1).standard_normal((3, *runner.image_shape[1:])).astype(np.float32)
    a, _ = runner.forward(x, np.ones(3, np.float32))
    b, _ = runner.forward(x, None)  # ignored, so optional
    np.testing.assert_array_equal(a, b)


def test_runner_is_safe_from_several_threads(exported) -> None:
    runner = OnnxRunner(exported["path"], threads=1)
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((2, *runner.image_shape[1:])).astype(np.float32) for _ in range(8)]
    sex = np.array([0, 1], np.float32)
    serial = [runner.forward(b, sex)[0] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda b: runner.forward(b, sex)[0], batches))
    for s, p in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(s, p)


def test_ensure_onnx_exports_when_missing_or_stale(run_dir, tmp_path) -> None:
    d = tmp_path / "run"
    shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns("model.onnx"))
    path = ensure_onnx(d)
    assert path == d / "model.onnx" and path.exists()
    first = path.stat().st_mtime_ns
    assert ensure_onnx(d).stat().st_mtime_ns == first  # up to date: left alone
    later = time.time() + 5
    os.utime(d / "model.pt", (later, later))  # new weights
    assert ensure_onnx(d).stat().st_mtime_ns != first


def _cli(*argv: str) -> int:
    """``h2a export ...`` through the module's own parser, as h2a.cli.main runs it."""
    parser = argparse.ArgumentParser(prog="h2a")
    export_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def test_cli_writes_model_onnx_and_prints_json(run_dir, capsys) -> None:
    (run_dir / "model.onnx").unlink(missing_ok=True)
    assert _cli("--model", str(run_dir), "--onnx", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["path"]) == run_dir / "model.onnx" and (run_dir / "model.onnx").exists()
    assert out["max_abs_diff_raw"] < TOL


def test_cli_out_and_text_output(run_dir, tmp_path, capsys) -> None:
    target = tmp_path / "sub" / "x.onnx"
    assert _cli("--model", str(run_dir), "--onnx", "--out", str(target)) == 0
    text = capsys.readouterr().out
    assert target.exists() and f"wrote {target}" in text and "max |raw difference|" in text


def test_cli_bad_run_is_one_clear_error(tmp_path) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(CliError, match="not a finished run"):
        _cli("--model", str(empty), "--onnx")
    with pytest.raises(CliError, match="no run at"):
        _cli("--model", str(tmp_path / "missing"), "--onnx")
    with pytest.raises(CliError, match="--onnx"):
        _cli("--model", str(empty))


def test_cli_bad_run_through_main_has_no_traceback(tmp_path, capsys) -> None:
    from h2a import cli

    if export_cli not in cli.COMMAND_GROUPS:
        pytest.skip("h2a export is not registered in h2a.cli yet")
    assert cli.main(["export", "--model", str(tmp_path / "missing"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("h2a export: error: no run at") and "Traceback" not in err
