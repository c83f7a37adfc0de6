"""Each training callback on its own, with small fake inputs: no dataset, no training run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from h2a.engine.callbacks import (
    CANCELLED,
    Checkpointer,
    DivergenceGuard,
    EarlyStopping,
    EpochLog,
    EpochMeter,
    ProgressFile,
    StopFlags,
)
from h2a.engine.config import TrainingDiverged
from h2a.engine.state import CHECKPOINT_KEYS, TrainState
from h2a.inference.tasks import get_task


def _eng(**kw) -> SimpleNamespace:
    return SimpleNamespace(state=TrainState(), **kw)


def _meter(epoch: int = 1, batch: int = 1, elapsed: float = 0.0) -> EpochMeter:
    m = EpochMeter(epoch=epoch, batches=4, train_size=64)
    m.batch, m.elapsed = batch, elapsed
    m.add(0.5, 8)
    return m


# ---------------------------------------------------------------- divergence

def test_divergence_guard_raises_on_nan() -> None:
    guard = DivergenceGuard(lr=0.1)
    guard.on_loss(_eng(), _meter(), 1.0)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 1.*--lr 0.01"):
        guard.on_loss(_eng(), _meter(), math.nan)


def test_divergence_guard_uses_the_median_of_the_last_three() -> None:
    guard = DivergenceGuard(lr=1.0)
    for v in (1.0, 2.0, 500.0):  # median of (1, 2, 500) is 2: a single spike is not divergence
        guard.on_loss(_eng(), _meter(), v)
    guard.on_loss(_eng(), _meter(), 50.0)  # median of (2, 500, 50) = 50 < 100 x 1
    with pytest.raises(TrainingDiverged, match="loss 400"):
        guard.on_loss(_eng(), _meter(), 400.0)  # median of (500, 50, 400) = 400 > 100 x 1


def test_divergence_guard_first_loss_floor() -> None:
    guard = DivergenceGuard(lr=1.0)
    guard.on_loss(_eng(), _meter(), 0.0)  # first loss floored at 1e-3: limit 0.1
    guard.on_loss(_eng(), _meter(), 0.05)
    guard.on_loss(_eng(), _meter(), 0.2)  # median of (0, 0.05, 0.2) = 0.05: fine
    with pytest.raises(TrainingDiverged):
        guard.on_loss(_eng(), _meter(), 0.2)  # median of (0.05, 0.2, 0.2) = 0.2 > 0.1


# ---------------------------------------------------------------- early stopping

def test_early_stopping_after_patience_stale_epochs() -> None:
    stop = EarlyStopping(patience=2)
    eng = _eng()
    for epoch, score in enumerate([5.0, 4.0, 4.5, 4.2], 1):
        eng.state.observe(epoch, score)
        stop.on_epoch_end(eng, {"epoch": epoch})
        stop.on_epoch_synced(eng)
        if epoch < 4:
            assert eng.state.stop_reason == "", epoch
    assert eng.state.stale == 2 and eng.state.best_epoch == 2
    assert eng.state.stop_reason == "early stopping: no improvement for 2 epochs"


def test_early_stopping_off_and_keeps_an_earlier_reason() -> None:
    eng = _eng()
    eng.state.stale = 50
    EarlyStopping(patience=0).on_epoch_end(eng, {"epoch": 1})
    assert eng.state.early_stop is False
    eng.state.stop_reason = CANCELLED
    stop = EarlyStopping(patience=1)
    stop.on_epoch_end(eng, {"epoch": 1})
    stop.on_epoch_synced(eng)
    assert eng.state.early_stop and eng.state.stop_reason == CANCELLED


# ---------------------------------------------------------------- stop flags

def test_stop_flags_see_the_cancel_file(tmp_path: Path) -> None:
    flags = StopFlags(tmp_path, main=True, budget_min=None)
    eng = _eng()
    flags.on_batch_end(eng, _meter())
    assert eng.state.stop_reason == ""
    (tmp_path / "CANCEL").touch()
    flags.on_batch_end(eng, _meter())
    assert eng.state.stop_reason == CANCELLED
    other = _eng()
    StopFlags(tmp_path, main=False, budget_min=None).on_batch_end(other, _meter())
    assert other.state.stop_reason == ""  # only rank 0 looks at the file


def test_stop_flags_time_budget(tmp_path: Path) -> None:
    flags = StopFlags(tmp_path, main=True, budget_min=0.5)
    eng = _eng()
    flags.on_batch_end(eng, _meter(elapsed=29.0))
    assert eng.state.stop_reason == ""
    flags.on_batch_end(eng, _meter(elapsed=31.0))
    assert eng.state.stop_reason == "time budget of 0.5 min reached"


def test_stop_flags_follow_the_other_ranks(tmp_path: Path) -> None:
    """Under DDP the max over ranks decides: another rank's cancel stops this one too."""
    sent: list[float] = []

    def reduce_from(peer: float):
        def reduce(v: float) -> float:
            sent.append(v)
            return max(v, peer)
        return reduce

    eng = _eng()
    StopFlags(tmp_path, main=False, budget_min=1.0, reduce=reduce_from(0.0)).on_batch_end(eng, _meter())
    assert eng.state.stop_reason == "" and sent == [0.0]
    StopFlags(tmp_path, main=False, budget_min=1.0, reduce=reduce_from(2.0)).on_batch_end(eng, _meter())
    assert eng.state.stop_reason == CANCELLED
    eng = _eng()
    StopFlags(tmp_path, main=False, budget_min=1.0, reduce=reduce_from(1.0)).on_batch_end(eng, _meter())
    assert eng.state.stop_reason == "time budget of 1 min reached"
    (tmp_path / "CANCEL").touch()
    StopFlags(tmp_path, main=True, budget_min=None, reduce=reduce_from(0.0)).on_batch_end(_eng(), _meter())
    assert sent[-1] == 2.0  # rank 0 tells the others it was a cancel


# ---------------------------------------------------------------- progress file

def test_progress_file_is_atomic_and_throttled(tmp_path: Path) -> None:
    calls: list[tuple] = []
    state = {"status": "running", "epochs": 2, "batches": 4, "history": []}
    writer = ProgressFile(tmp_path, True, state, progress=lambda d, t, m: calls.append((d, t, m)), budget_s=100.0)
    eng = _eng(opt=SimpleNamespace(param_groups=[{"lr": 0.01}]))
    writer.update(force=True)
    first = (tmp_path / "progress.json").stat().st_mtime_ns
    m = _meter(epoch=2, batch=2, elapsed=50.0)
    m.start = time.monotonic() - 2.0  # 1 s per batch
    writer.on_batch_end(eng, m)
    # throttled: the in-memory state has the batch, the file not yet
    assert state["batch"] == 2 and state["lr"] == 0.01 and state["fraction"] == 6 / 8
    assert 1.9 < state["eta_s"] < 2.5 and state["train_loss_running"] == 0.5
    assert "batch" not in json.loads((tmp_path / "progress.json").read_text())
    assert (tmp_path / "progress.json").stat().st_mtime_ns == first
    assert calls[-1] == (6, 8, "epoch 2/2")
    eng.state.history.append({"epoch": 2})
    writer.on_epoch_end(eng, {"epoch": 2})  # forced: on disk now
    on_disk = json.loads((tmp_path / "progress.json").read_text())
    assert on_disk["batch"] == 4 and on_disk["history"] == [{"epoch": 2}] and "updated" in on_disk
    assert not list(tmp_path.glob("*.tmp*"))  # no temp file left behind


def test_progress_file_budget_caps_the_eta(tmp_path: Path) -> None:
    state = {"epochs": 10, "batches": 4}
    writer = ProgressFile(tmp_path, False, state, budget_s=60.0)
    m = _meter(epoch=1, batch=1, elapsed=55.0)
    m.start = time.monotonic() - 10.0
    writer.on_batch_end(_eng(opt=SimpleNamespace(param_groups=[{"lr": 1.0}])), m)
    assert state["eta_s"] == pytest.approx(5.0, abs=0.5)
    assert not (tmp_path / "progress.json").exists()  # disabled (not rank 0): nothing written


# ---------------------------------------------------------------- checkpoint / best model

def _ckpt_eng() -> SimpleNamespace:
    from h2a.engine.config import TrainConfig
    from h2a.engine.optim import Schedule

    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = Schedule(TrainConfig(data="", out="", scheduler="step"), opt, 5)
    return _eng(model=model, eval_model=model, ema=None, opt=opt, sched=sched,
                splits={"train": ["a"], "validation": ["b"], "holdout": []}, task=get_task("boneage", 100.0, 40.0))


def test_checkpointer_writes_the_keys_and_model_only_on_improvement(tmp_path: Path) -> None:
    eng = _ckpt_eng()
    ckpt = Checkpointer(tmp_path, True, mlflow_run_id="abc")
    eng.state.epoch = 1
    eng.state.observe(1, 3.0)
    ckpt.on_epoch_end(eng, {"epoch": 1})
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(saved) and "ema" not in saved
    assert saved["mlflow_run_id"] == "abc" and saved["target_mean"] == 100.0 and saved["best_epoch"] == 1
    assert (tmp_path / "model.pt").exists()
    best_weights = torch.load(tmp_path / "model.pt", weights_only=True)["weight"].clone()
    with torch.no_grad():
        eng.model.weight.add_(1.0)
    eng.state.epoch = 2
    eng.state.observe(2, 4.0)  # worse: model.pt keeps epoch 1's weights
    ckpt.on_epoch_end(eng, {"epoch": 2})
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], best_weights)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["stale"] == 1 and saved["best"] == 3.0
    assert torch.equal(saved["model"]["weight"], eng.model.weight.detach())


def test_checkpointer_disabled_on_other_ranks(tmp_path: Path) -> None:
    eng = _ckpt_eng()
    eng.state.observe(1, 1.0)
    Checkpointer(tmp_path, False).on_epoch_end(eng, {"epoch": 1})
    assert not list(tmp_path.iterdir())


def test_epoch_log_line() -> None:
    lines: list[str] = []
    record = {"epoch": 3, "train_loss": 0.25, "val_mae": 9.5, "time_s": 12.0, "train_size": 96,
              "data_wait_share": 0.1}
    EpochLog(lines.append, True, 10).on_epoch_end(_eng(task=get_task("boneage")), record)
    EpochLog(lines.append, False, 10).on_epoch_end(_eng(task=get_task("boneage")), record)
    assert lines == ["epoch 3/10: train loss 0.2500, val MAE 9.50 mo (12 s at 96 px, data wait 10%)"]


def test_progress_file_finish_is_written_even_when_the_disk_is_full(tmp_path: Path, monkeypatch) -> None:
    """The atomic write needs room for a temp file; the last word must not need it (it used
    to fail, leaving 'running' on disk and masking the error that ended the run)."""
    import errno

    from h2a.engine import callbacks

    state = {"status": "running", "epochs": 2, "history": [{"epoch": 1}]}
    pf = ProgressFile(tmp_path, True, state)
    pf.update(force=True)

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(callbacks, "atomic_write_json", full)
    logged: list[str] = []
    pf.finish("failed", "disk full while writing checkpoint.pt", logged.append)
    prog = json.loads((tmp_path / "progress.json").read_text())
    assert prog["status"] == "failed" and prog["message"].startswith("disk full")
    assert prog["history"] == [{"epoch": 1}] and not logged
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]
