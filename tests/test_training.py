"""The training engine on small demo data: learns, resumes, warm-starts, guards, tracks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from h2a.data.preprocess import PreprocessConfig
from h2a.run import read_json
from h2a.engine.config import TrainConfig, TrainingDiverged, TrainingError
from h2a.engine.trainer import train
from tests.conftest import REPO, run_cli

SMALL = PreprocessConfig(size=48).to_dict()


def _cfg(demo_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(demo_dir), out=str(out), arch="tiny_cnn", pretrained=False, preprocess=SMALL,
                epochs=2, batch_size=32, lr=3e-3, workers=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_run_beats_predicting_the_mean(tiny_run: Path) -> None:
    meta = read_json(tiny_run / "metadata.json")
    m = meta["metrics"]
    assert m["n"] == meta["split_sizes"]["validation"] > 20
    assert m["mae"] < 0.75 * m["mae_baseline_mean"], m
    assert meta["task"] == "boneage" and meta["model"]["name"] == "tiny_cnn"
    assert meta["preprocess"]["size"] == 64
    assert meta["dataset"]["synthetic"] is True and len(meta["dataset"]["fingerprint"]) == 16
    assert set(meta["splits"]["train"]).isdisjoint(meta["splits"]["validation"])
    assert "not for clinical decisions" in meta["note"]
    assert [h["epoch"] for h in meta["history"]] == list(range(1, 13))
    assert (tiny_run / "model.pt").exists() and (tiny_run / "checkpoint.pt").exists()


def test_evaluate_json_fields(tiny_run: Path, demo_dir: Path) -> None:
    proc = run_cli("evaluate", "--model", str(tiny_run), "--data", str(demo_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("task", "n", "mae", "rmse", "r2", "within_12_months", "mae_by_sex", "mae_by_age_bin"):
        assert key in out, key
    assert out["task"] == "boneage" and out["split"] == "all"
    assert out["n"] == int(os.environ["H2A_DEMO_N"])  # all labelled images of the folder
    assert set(out["mae_by_sex"]) == {"male", "female"}
    assert out["rmse"] >= out["mae"] > 0
    own = json.loads(run_cli("evaluate", "--model", str(tiny_run), "--json").stdout)
    meta = read_json(tiny_run / "metadata.json")
    assert own["split"] == "validation" and own["n"] == meta["metrics"]["n"]
    assert abs(own["mae"] - meta["metrics"]["mae"]) < 1e-3


def test_augmented_tta_views_are_seeded_and_averaged(tiny_run: Path) -> None:
    from h2a.inference.evaluate import evaluate

    plain = evaluate(tiny_run, split="validation", flip_tta=True)
    views = evaluate(tiny_run, split="validation", flip_tta=True, tta_views=3)
    again = evaluate(tiny_run, split="validation", flip_tta=True, tta_views=3)
    # predictions come sorted worst first: align them by image id
    p0, p1, p2 = (r.predictions.set_index("id").sort_index()["predicted"].to_numpy() for r in (plain, views, again))
    assert (p1 == p2).all()  # seeded: the same figure every time
    assert abs(p1 - p0).max() > 1e-4  # the augmented copies do change the mean
    # ...but of the same images: a copy paired with another image's sex or row would not track
    assert np.corrcoef(p0, p1)[0, 1] > 0.9
    assert abs(views.metrics["mae"] - plain.metrics["mae"]) < 0.25 * plain.metrics["mae"]
    assert views.metrics["tta_views"] == 3 and plain.metrics["tta_views"] == 0


def test_predict_cli_one_bad_file_does_not_stop_the_rest(tiny_run: Path, demo_dir: Path, tmp_path: Path) -> None:
    good = sorted((demo_dir / "boneage-training-dataset").glob("*.png"))[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    proc = run_cli("predict", "--model", str(tiny_run), "--sex", "female", str(good[0]), str(bad), str(good[1]),
                   "--json", "--tta", "2")
    out = json.loads(proc.stdout)
    assert [bool(r.get("error")) for r in out] == [False, True, False], out
    assert "broken.png" in out[1]["error"]
    assert all(0 < r["bone_age_months"] < 260 for r in (out[0], out[2]))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_warm_start_and_freeze(tiny_run: Path, demo_dir: Path, workspace: Path) -> None:
    meta = train(_cfg(demo_dir, workspace / "models" / "warm", preprocess=PreprocessConfig(size=64).to_dict(),
                      epochs=1, init_from=str(tiny_run), freeze=2, lr=1e-4), log=lambda m: None)
    ws = meta["warm_start"]
    assert ws["tensors"] == ws["of"] > 10
    # the source's own training travels with the run (a card describes both stages without it)
    source = read_json(tiny_run / "metadata.json")
    assert ws["source"]["epochs_run"] == source["epochs_run"] >= 1
    assert ws["source"]["image_size"] == source["preprocess"]["size"]
    assert ws["source"]["train_seconds"] == source["train_seconds"] > 0
    assert meta["frozen_blocks"] == 2
    # starting from a trained model, one gentle epoch stays near its quality
    assert meta["metrics"]["mae"] < read_json(tiny_run / "metadata.json")["metrics"]["mae_baseline_mean"]


def test_divergence_guard_stops_an_absurd_learning_rate(demo_dir: Path, workspace: Path) -> None:
    out = workspace / "models" / "diverge"
    with pytest.raises(TrainingDiverged, match="diverged.*learning rate"):
        train(_cfg(demo_dir, out, optimizer="sgd", lr=100.0, epochs=3), log=lambda m: None)
    prog = read_json(out / "progress.json")
    assert prog["status"] == "diverged" and "--lr" in prog["message"]
    proc = run_cli("train", "--data", str(demo_dir), "--out", str(workspace / "models" / "diverge-cli"),
                   "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "48", "--optimizer", "sgd",
                   "--lr", "100", "--epochs", "2", "--workers", "0")
    assert proc.returncode == 2 and "diverged" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_options_are_clear(demo_dir: Path, workspace: Path) -> None:
    with pytest.raises(TrainingError, match="learning rate"):
        train(_cfg(demo_dir, workspace / "models" / "bad", lr=-1.0))
    proc = run_cli("train", "--data", str(demo_dir), "--out", str(workspace / "models" / "bad2"),
                   "--arch", "resnet50", "--pretrained", "--epochs", "1", "--workers", "0", "--image-size", "48")
    assert proc.returncode == 2 and "resnet50" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_after_kill_continues_at_the_next_epoch(demo_dir: Path, workspace: Path) -> None:
    out = workspace / "models" / "killed"
    cmd = [sys.executable, "-m", "h2a", "train", "--data", str(demo_dir), "--out", str(out), "--arch", "tiny_cnn",
           "--no-pretrained", "--image-size", "48", "--epochs", "40", "--batch-size", "16", "--workers", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + 240
    checkpointed = False
    while time.time() < deadline:
        prog = read_json(out / "progress.json") or {}
        if len(prog.get("history", [])) >= 2 and (out / "checkpoint.pt").exists():
            checkpointed = True
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert checkpointed, "the run never checkpointed two epochs"
    import torch

    from h2a.run import run_status

    assert run_status(out)["status"] == "stopped"  # progress.json says running, the process is gone
    at_kill = int(torch.load(out / "checkpoint.pt", weights_only=True)["epoch"])
    assert at_kill >= 2
    saved = json.loads((out / "config.json").read_text())
    saved["epochs"] = at_kill + 2  # shorten the rest of the run for the test
    (out / "config.json").write_text(json.dumps(saved))
    done = run_cli("train", "--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert f"resuming killed at epoch {at_kill + 1}/{at_kill + 2}" in done.stdout
    meta = read_json(out / "metadata.json")
    assert [h["epoch"] for h in meta["history"]] == list(range(1, at_kill + 3))  # none lost or repeated
    assert meta["splits"]["train"] == torch.load(out / "checkpoint.pt", weights_only=True)["splits"]["train"]


def test_mlflow_records_params_and_epoch_metrics(tiny_run: Path, workspace: Path) -> None:
    from mlflow.tracking import MlflowClient

    from h2a.settings import get_settings

    meta = read_json(tiny_run / "metadata.json")
    client = MlflowClient(tracking_uri=get_settings().mlflow_uri)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.run_name == "tiny-boneage" and run.info.status == "FINISHED"
    assert run.data.params["arch"] == "tiny_cnn" and run.data.params["pp_size"] == "64"
    history = client.get_metric_history(run.info.run_id, "val_mae")
    assert [int(m.step) for m in history] == list(range(1, 13))
    assert abs(run.data.metrics["final_mae"] - meta["metrics"]["mae"]) < 1e-6


def test_torchrun_two_processes_on_cpu(demo_dir: Path, workspace: Path) -> None:
    out = workspace / "models" / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "h2a", "train",
           "--data", str(demo_dir), "--out", str(out), "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "48",
           "--epochs", "2", "--batch-size", "16", "--workers", "0", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    meta = read_json(out / "metadata.json")
    prog = read_json(out / "progress.json")
    assert prog["world_size"] == 2 and prog["status"] == "finished"
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    # each process saw half of the training images per epoch: batches per epoch halve
    n_train = meta["split_sizes"]["train"]
    assert prog["batches"] == (n_train // 2) // 16
    assert proc.stdout.count("epoch 1/2") == 1  # only rank 0 logs


def test_torchrun_stops_every_rank_together(demo_dir: Path, workspace: Path) -> None:
    """A time budget that runs out mid-epoch must stop both ranks at the same step (no hang)."""
    out = workspace / "models" / "ddp-budget"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "h2a", "train",
           "--data", str(demo_dir), "--out", str(out), "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "48",
           "--epochs", "50", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--time-budget", "0.05",
           "--patience", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = read_json(out / "metadata.json")
    assert meta["stop_reason"].startswith(("time budget", "early stopping"))
    assert len(meta["history"]) < 50


def test_ema_weights_are_what_is_saved(demo_dir: Path, workspace: Path) -> None:
    import torch

    out = workspace / "models" / "ema"
    meta = train(_cfg(demo_dir, out, epochs=2, ema=0.9), log=lambda m: None)
    saved = torch.load(out / "model.pt", weights_only=True)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    key = next(k for k in saved if k.endswith("weight") and saved[k].ndim == 4)
    assert not torch.equal(saved[key], ckpt["model"][key])  # the average, not the last step
    assert "ema" in ckpt and meta["train_config"]["ema"] == 0.9
    assert meta["metrics"]["n"] > 0


def test_bn_momentum_is_set_on_every_batchnorm(demo_dir: Path, workspace: Path) -> None:
    import torch.nn as nn

    from h2a.models import create_model, set_bn_momentum

    model = create_model("efficientnet_lite0", "boneage", pretrained=False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]  # timm's BatchNormAct2d included
    assert len(bns) == 49  # stem, 16 MBConv blocks (2 or 3 each), head
    assert set_bn_momentum(model, 0.01) == len(bns)  # TensorFlow's value, as the weights were trained
    assert all(m.momentum == 0.01 for m in bns)
    assert set_bn_momentum(model, 0.1) == len(bns)
    assert all(m.momentum == 0.1 for m in bns)
    with pytest.raises(TrainingError, match="bn_momentum"):
        train(_cfg(demo_dir, workspace / "models" / "bn0", bn_momentum=0.0))


def test_progressive_resizing_grows_to_the_full_size(demo_dir: Path, workspace: Path) -> None:
    import torch

    from h2a.engine.optim import progressive_size, resize_batch

    sizes = [progressive_size(96, 128, p / 100) for p in range(101)]
    assert sizes[0] == 96 and sizes == sorted(sizes) and set(sizes) == {96, 112, 128}
    assert sizes[69] < 128 == sizes[70]  # the last 30% of the run trains at full size
    assert progressive_size(None, 128, 0.1) == 128
    assert resize_batch(torch.zeros(2, 1, 64, 64), 32).shape == (2, 1, 32, 32)

    out = workspace / "models" / "progressive"
    meta = train(_cfg(demo_dir, out, epochs=4, preprocess=PreprocessConfig(size=64).to_dict(), progressive_from=32),
                 log=lambda m: None)
    # Batch sizes follow the steps done: 32 px early, 48 px mid-run, 64 px for the last 30%.
    assert [h["train_size"] for h in meta["history"]] == [32, 48, 64, 64]
    assert meta["train_config"]["progressive_from"] == 32
    losses = [h["train_loss"] for h in meta["history"]]
    assert losses[-1] < losses[0] and np.isfinite(meta["metrics"]["mae"])  # still learns across the size changes
    with pytest.raises(TrainingError, match="progressive"):
        train(_cfg(demo_dir, workspace / "models" / "progressive-bad", progressive_from=48))
