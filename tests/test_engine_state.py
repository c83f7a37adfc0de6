"""TrainState bookkeeping and checkpoint round trip; the MLflow tracker never raises."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from h2a.engine.config import TrainConfig
from h2a.run import safe_load
from h2a.engine.state import CHECKPOINT_KEYS, TrainState, save_checkpoint


def test_observe_tracks_best_and_stale() -> None:
    s = TrainState()
    assert s.observe(1, 5.0) and s.best == 5.0 and s.best_epoch == 1
    assert not s.observe(2, 5.0) and s.stale == 1  # equal is not better
    assert not s.observe(3, 6.0) and s.stale == 2
    assert s.observe(4, -1.0) and (s.best, s.best_epoch, s.stale) == (-1.0, 4, 0)


def test_checkpoint_round_trip_restores_state_and_rng(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = TrainState(epoch=3, step=30, best=2.5, best_epoch=2, stale=1, history=[{"epoch": 1}, {"epoch": 2}])
    s.t0 = time.monotonic() - 100.0
    sched = type("S", (), {"state_dict": lambda self: {"k": 1}})()
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "checkpoint.pt", s, model=model, optimizer=opt, scheduler=sched,
                    splits={"train": ["a"]}, target_mean=1.0, target_std=2.0, mlflow_run_id=None, ema=model)
    expected = torch.rand(3)
    ckpt = safe_load(tmp_path / "checkpoint.pt")
    assert set(ckpt) == set(CHECKPOINT_KEYS) | {"ema"}
    assert ckpt["elapsed"] == pytest.approx(100.0, abs=1.0) and ckpt["scheduler"] == {"k": 1}
    torch.manual_seed(0)  # scramble the RNG; the checkpoint must bring it back
    history: list[dict] = []
    r = TrainState.from_checkpoint(ckpt, history=history)
    assert torch.equal(torch.rand(3), expected)
    assert (r.epoch, r.step, r.best, r.best_epoch, r.stale) == (3, 30, 2.5, 2, 1)
    assert r.history is history  # shared with progress.json's state
    assert r.elapsed == pytest.approx(100.0, abs=1.0)
    assert TrainState.from_checkpoint(ckpt).history == [{"epoch": 1}, {"epoch": 2}]
    assert math.isinf(TrainState().best)


def test_mlflow_tracker_logs_to_a_file_store_and_never_raises(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("H2A_WORKSPACE", str(tmp_path))
    from h2a.engine.tracking import MLflowTracker
    from h2a.settings import get_settings

    if hasattr(get_settings, "cache_clear"):
        get_settings.cache_clear()
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "models" / "t1"))
    tracker = MLflowTracker(True, cfg, None)
    assert tracker.error is None and tracker.run_id
    tracker.on_epoch_end(None, {"epoch": 1, "train_loss": 0.5, "val_auc": math.nan, "note": "x"})
    tracker.log({"bad": float("inf"), "ok": 1}, step=2)
    tracker.close("finished")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=get_settings().mlflow_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["lr"] == str(cfg.lr)
    assert run.data.metrics == {"train_loss": 0.5, "ok": 1.0}  # NaN/inf and text are skipped
    # a broken store is reported, not raised
    tracker.mlflow = None  # any call now fails
    tracker.enabled = True
    tracker.log({"x": 1.0}, step=3)
    assert tracker.error and "MLflow logging failed" in tracker.error
    tracker.close("failed")  # swallowed
    import mlflow

    def broken(*a, **k):
        raise OSError("store unreachable")

    monkeypatch.setattr(mlflow, "set_tracking_uri", broken)
    dead = MLflowTracker(True, cfg, None)
    assert not dead.enabled and "MLflow tracking disabled: store unreachable" in dead.error
    dead.on_epoch_end(None, {"epoch": 1, "train_loss": 1.0})
    dead.close("finished")
    off = MLflowTracker(False, cfg, "given")
    off.log({"x": 1.0}, step=1)
    assert off.run_id == "given" and off.error is None
    if hasattr(get_settings, "cache_clear"):
        get_settings.cache_clear()


def test_a_bad_checkpoint_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    from h2a.engine.state import CheckpointError, load_checkpoint

    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    good = tmp_path / "checkpoint.pt"
    save_checkpoint(good, TrainState(epoch=1), model=model, optimizer=opt, scheduler=_NoSched(), splits={},
                    target_mean=0.0, target_std=1.0, mlflow_run_id=None)
    assert load_checkpoint(good)["epoch"] == 1
    data = good.read_bytes()
    for name, content in (("cut.pt", data[: len(data) // 3]), ("noise.pt", b"\x00garbage" * 100), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{tmp_path / name} is truncated or corrupt"):
            load_checkpoint(tmp_path / name)
    torch.save(model.state_dict(), tmp_path / "model.pt")  # a model, not a checkpoint
    with pytest.raises(CheckpointError, match="is not a training checkpoint"):
        load_checkpoint(tmp_path / "model.pt")


class _NoSched:
    def state_dict(self) -> dict:
        return {}
