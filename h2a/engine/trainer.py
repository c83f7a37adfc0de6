"""One training engine for both tasks (bone-age regression, sex classification).

The same ``train(cfg)`` runs from the CLI, from the app (as a background subprocess of
the CLI) and under ``torchrun`` (DDP, rank-0 logging and saving). CUDA with bf16 autocast
and channels_last when there is a GPU; on CPU float32 channels_last (1.6x faster than
bf16 autocast for EfficientNet-Lite0 on AMX: oneDNN's bf16 depthwise backward is slow) or
bf16 autocast on request. Rank 0 holds the run folder's lock (``h2a.engine.lock``) for the
run's life, so a second writer is refused. Every epoch ends with an atomic checkpoint, so a
killed run resumes at the next epoch and a full disk keeps the last good one; a cancel
flag file, a time budget, early stopping and a divergence guard end a run cleanly with a
clear status.

This module opens, runs and closes a run; the pieces live beside it: ``builder`` (building),
``loop`` (the iteration), ``callbacks`` and ``tracking`` (everything around it), ``state``
(what a resume needs), ``tasks`` (what differs between bone age and sex), ``optim``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from h2a import RESEARCH_NOTE, __version__
from h2a.device import describe_device, resolve_device
from h2a.engine.builder import build_engine
from h2a.engine.callbacks import CANCELLED, ProgressFile
from h2a.engine.config import TrainConfig, TrainingDiverged, TrainingError
from h2a.engine.distributed import init_distributed, leave_together
from h2a.engine.lock import RunLock
from h2a.engine.loop import Engine, run_epochs
from h2a.engine.optim import make_optimizer, progressive_size, resize_batch  # noqa: F401 - the old import path
from h2a.run import CANCEL, Run, atomic_torch_save, is_disk_full, os_error, safe_load, sweep_temp_files
from h2a.engine.splits import make_splits  # noqa: F401 - the old import path
from h2a.engine.state import CheckpointError, load_checkpoint
from h2a.engine.tracking import MLflowTracker
from h2a.inference.arrays import predict_arrays
from h2a.inference.calibration import calibration_summary, predict_procedure
from h2a.processes import host, start_time
from h2a.progress import ProgressFn
from h2a.settings import dist_env


class DiskFull(TrainingError):
    """A write failed for want of space (or a file-size limit or quota)."""


def train(cfg: TrainConfig, progress: ProgressFn | None = None, log=print, callbacks: Sequence = ()) -> dict:
    """Run (or resume) a training run; returns metadata.json's content.

    ``callbacks`` (``h2a.engine.callbacks.Callback``) see every event after the run's own
    handlers: a study's trial reports each epoch's validation figure and may stop the run.

    Raises TrainingError (incl. TrainingDiverged, DiskFull, CheckpointError, RunLocked)
    with a clear message; the run's progress.json then says 'failed' / 'diverged' with the
    same message, except when another writer holds the folder (its files are not ours).
    """
    cfg.validate()
    env = dist_env()
    init_distributed(cfg, env.enabled)
    device = resolve_device(cfg.device, env.local_rank)
    _configure_device(device)
    with _run_lock(Path(cfg.out), env.is_main):
        return _train_locked(cfg, env, device, progress, log, callbacks)


@contextmanager
def _run_lock(run_dir: Path, main: bool):
    """Rank 0 holds the folder's lock from before it reads anything until after its last write."""
    if not main:
        yield
        return
    with RunLock(run_dir):
        sweep_temp_files(run_dir)  # a killed writer's half files; no one else writes here now
        yield


def _train_locked(cfg: TrainConfig, env, device: torch.device, progress: ProgressFn | None, log,
                  callbacks: Sequence = ()) -> dict:
    state = {"status": "starting", "pid": os.getpid(), "pid_start": start_time(os.getpid()), "host": host(),
             "task": cfg.task, "arch": cfg.arch, "device": describe_device(device), "world_size": env.world_size,
             "epoch": 0, "epochs": cfg.epochs, "batch": 0, "batches": 0, "history": [], "message": "",
             "started": time.time()}
    try:
        cfg, ckpt = _open_run(cfg, env.is_main, state)
    except CheckpointError as exc:
        old = Run.at(cfg.out).progress or {}  # keep the curves the page shows
        state.update(history=old.get("history", []), epoch=old.get("epoch", 0), started=old.get("started"))
        ProgressFile(Path(cfg.out), env.is_main, state).finish("failed", str(exc), log)
        raise
    writer = ProgressFile(Path(cfg.out), env.is_main, state, progress,
                          budget_s=cfg.time_budget_min * 60 if cfg.time_budget_min else None)
    tracker = MLflowTracker(env.is_main, cfg, ckpt.get("mlflow_run_id") if ckpt else None)
    status, message = "failed", ""
    try:
        writer.update(force=True)
        result = _train(cfg, ckpt, device, env, writer, tracker, log, callbacks)
        status, message = "finished", ""
        return result
    except TrainingDiverged as exc:
        status, message = "diverged", str(exc)
        raise
    except KeyboardInterrupt:
        status, message = "cancelled", "interrupted"
        raise
    except Exception as exc:
        status, message = "failed", str(exc)
        if is_disk_full(exc):
            message = disk_full_message(exc, Path(cfg.out))
            raise DiskFull(message) from exc
        raise
    finally:
        if status == "finished" and state.get("cancelled"):
            status, message = "cancelled", state.get("message", CANCELLED)
        writer.finish(status, message or state.get("message", ""), log)
        tracker.close(status)
        leave_together(env.enabled)


def disk_full_message(exc: BaseException, run_dir: Path) -> str:
    """'disk full while writing checkpoint.pt (...)', and what survived."""
    cause = os_error(exc)
    what = Path(cause.filename).name if cause is not None and cause.filename else "a file"
    reason = cause.strerror if cause is not None and cause.strerror else str(exc)
    kept = ("the last good checkpoint.pt is kept; free space, then resume the run"
            if Run.at(run_dir).checkpoint_file.exists() else "no checkpoint had been saved yet")
    return f"disk full while writing {what} ({reason}): {kept}"


def _configure_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _open_run(cfg: TrainConfig, main: bool, state: dict) -> tuple[TrainConfig, dict | None]:
    """A new run folder (config.json written), or the checkpoint and saved config to resume."""
    run_dir = Path(cfg.out)
    run = Run.at(run_dir)
    ckpt = None
    if run.checkpoint_file.exists():
        old = run.progress or {}
        if old.get("status") == "finished":
            raise TrainingError(f"{run_dir} already holds a finished run; choose another --out")
        ckpt = load_checkpoint(run.checkpoint_file)
        saved = run.config
        if saved:
            # The folder it was pointed at wins over the one saved: a moved or copied run
            # writes where it now is, never back into the folder it came from.
            cfg = TrainConfig.from_dict({**saved, "out": cfg.out, "device": cfg.device, "workers": cfg.workers})
            if main and saved.get("out") != cfg.out:
                run.write_config(asdict(cfg))
        state["history"] = list(ckpt.get("history", []))
        state["started"] = old.get("started", state["started"])
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run.write_config(asdict(cfg))
    if main:
        (run_dir / CANCEL).unlink(missing_ok=True)
    return cfg, ckpt


def _train(cfg: TrainConfig, ckpt: dict | None, device: torch.device, env, writer: ProgressFile,
           tracker: MLflowTracker, log, callbacks: Sequence = ()) -> dict:
    eng, facts = build_engine(cfg, ckpt, device, env, writer, tracker, log)
    if callbacks:
        eng.callbacks.extend(callbacks)
        eng.__post_init__()  # rebuild the hook table with them
    if ckpt is not None:
        log(f"resuming {eng.run_dir.name} at epoch {eng.state.epoch + 1}/{cfg.epochs}")
    writer.update(force=True, status="running", epoch=eng.state.epoch + 1, batches=eng.steps_per_epoch,
                  n_train=facts["n_train"], n_val=len(eng.val.rows), frozen_blocks=facts["frozen"],
                  message=f"{facts['n_train']} training / {len(eng.val.rows)} validation images on {writer.state['device']}",
                  mlflow_run_id=tracker.run_id, tracking_error=tracker.error)
    log(writer.state["message"])
    run_epochs(eng)
    stop_reason = eng.state.stop_reason
    if stop_reason:
        log(stop_reason)
    if stop_reason.startswith("cancelled"):
        writer.state["cancelled"] = True
        writer.state["message"] = stop_reason
    if not env.is_main:
        return {}
    metrics = final_metrics(eng)
    tracker.log({f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=len(eng.state.history))
    cal = calibrate(eng, log)
    meta = run_metadata(eng, metrics, facts, device=writer.state["device"], mlflow_run_id=tracker.run_id)
    meta["calibration"] = calibration_summary(cal)
    if cal is not None:
        Run.at(eng.run_dir).write_calibration(cal)
    Run.at(eng.run_dir).write_meta(meta)
    return meta


def final_metrics(eng: Engine) -> dict:
    """Reload the best epoch's weights (model.pt) and measure them on the validation split."""
    best = Run.at(eng.run_dir).model_file
    if best.exists():
        eng.model.load_state_dict(safe_load(best))
    else:
        atomic_torch_save(best, eng.model.state_dict())
    va = eng.val
    raw = predict_arrays(eng.model, eng.cache.take(va.rows), va.male, eng.norm, eng.device)
    return eng.task.metrics(eng.task.to_output(raw), va.age, va.male)


def calibrate(eng: Engine, log=print) -> dict | None:
    """Fit the run's calibration (conformal intervals / temperature) on the validation split.

    The residuals come from the procedure ``h2a predict`` uses by default (the image and
    DEFAULT_TTA - 1 augmented copies), so the stored intervals hold for the predictions
    they are used with; ``h2a calibrate`` refits for another procedure. A failure here is
    logged and leaves the run uncalibrated rather than failing a finished training.
    """
    va = eng.val
    if len(va.rows) == 0:
        return None
    procedure = predict_procedure()
    try:
        raw = predict_arrays(eng.model, eng.cache.take(va.rows), va.male, eng.norm, eng.device,
                             flip_tta=procedure.flip_tta, augment=eng.pcfg, views=procedure.views)
        cal = eng.task.calibrate(raw, va.age, va.male, procedure)
    except (ValueError, RuntimeError) as exc:
        log(f"calibration failed, the run has none ({exc})")
        return None
    summary = calibration_summary(cal)
    log(f"calibrated on {len(va.rows)} validation images ({procedure.describe()}): {summary.get('method')}")
    return cal


def run_metadata(eng: Engine, metrics: dict, facts: dict, device: str, mlflow_run_id: str | None) -> dict:
    """metadata.json: everything needed to load, judge and reproduce the run."""
    cfg, ds, warm, history, splits = eng.cfg, facts["dataset"], facts["warm"], eng.state.history, eng.splits
    return {
        "name": eng.run_dir.name,
        "task": cfg.task,
        "arch": cfg.arch,
        "model": eng.model.config,
        "preprocess": cfg.preprocess,
        "pretrained": cfg.pretrained,
        "target_mean": eng.task.mean,
        "target_std": eng.task.std,
        "dataset": {"path": str(Path(cfg.data).resolve()), "name": ds.name, "fingerprint": ds.fingerprint,
                    "synthetic": ds.synthetic},
        "splits": splits,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "train_config": asdict(cfg),
        "best_epoch": eng.state.best_epoch,
        "epochs_run": len(history),
        "stop_reason": eng.state.stop_reason or "completed all epochs",
        "metrics": metrics,
        "history": history,
        "warm_start": warm,
        "frozen_blocks": facts["frozen"],
        "device": device,
        "train_seconds": sum(h["time_s"] for h in history),
        "mlflow_run_id": mlflow_run_id,
        "versions": {"h2a": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "note": RESEARCH_NOTE,
    }
