"""Everything around the training iteration, one small class per concern (MONAI's handlers).

The loop (``h2a.engine.loop``) only forwards, steps and fires hooks; progress reporting,
stopping rules, checkpoints and logging live here, each testable without a training run.
Hooks run on every rank; a callback that only rank 0 should act on is built disabled on
the others. Per-batch hooks must stay cheap: no device syncs, no file writes unthrottled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from h2a.engine.config import DIVERGENCE_FACTOR, TrainingDiverged
from h2a.run import CANCEL, Run, atomic_torch_save, atomic_write_json, json_bytes, overwrite_in_place
from h2a.engine.state import save_checkpoint
from h2a.progress import ProgressFn

CANCELLED = "cancelled by the user"


@dataclass
class EpochMeter:
    """The running figures of the current epoch that the per-batch hooks report."""

    epoch: int
    batches: int  # planned batches per epoch
    train_size: int  # px of the last batch (progressive resizing)
    start: float = field(default_factory=time.monotonic)
    batch: int = 0
    running: float = 0.0  # sum of loss x batch size
    seen: int = 0
    wait: float = 0.0  # seconds spent waiting for the loader
    elapsed: float = 0.0  # seconds of the run so far (after this batch's step)
    fetch_started: float = field(default_factory=time.monotonic)

    def fetched(self) -> None:
        self.wait += time.monotonic() - self.fetch_started

    def waiting(self) -> None:
        """The loader's next fetch starts now."""
        self.fetch_started = time.monotonic()

    def add(self, value: float, n: int) -> None:
        self.running += value * n
        self.seen += n

    def record(self, lr: float) -> dict:
        """The epoch's history entry (validation adds its figures)."""
        spent = time.monotonic() - self.start
        return {"epoch": self.epoch, "train_loss": self.running / max(self.seen, 1), "lr": lr,
                "train_size": self.train_size, "time_s": spent, "data_wait_share": self.wait / max(1e-9, spent)}


class Callback:
    """No-op hooks; subclasses override the ones they need (the engine skips the rest)."""

    def on_loss(self, eng, meter: EpochMeter, value: float) -> None:
        """After the forward pass, before backward: the batch's loss as a Python float."""

    def on_batch_end(self, eng, meter: EpochMeter) -> None:
        """After the optimizer step."""

    def on_epoch_end(self, eng, record: dict) -> None:
        """After rank 0's validation (``record`` is in the history by then)."""

    def on_epoch_synced(self, eng) -> None:
        """After rank 0's verdicts were shared with every rank."""


class ProgressFile(Callback):
    """Writes progress.json (atomically, throttled to once a second) for the app and the CLI."""

    def __init__(self, run_dir: Path, enabled: bool, state: dict, progress: ProgressFn | None = None,
                 budget_s: float | None = None) -> None:
        self.path = Run.at(run_dir).progress_file
        self.enabled = enabled
        self.state = state
        self.progress = progress
        self.budget_s = budget_s
        self._last = 0.0

    def update(self, force: bool = False, **kw) -> None:
        self.state.update(kw)
        self.state["updated"] = time.time()
        now = time.monotonic()
        if self.enabled and (force or now - self._last > 1.0):
            self._last = now
            atomic_write_json(self.path, self.state)
        if self.progress is not None and self.state.get("batches"):
            s = self.state
            done = (s.get("epoch", 1) - 1) * s["batches"] + s.get("batch", 0)
            self.progress(done, s["epochs"] * s["batches"], f"epoch {s.get('epoch')}/{s['epochs']}")

    def finish(self, status: str, message: str, log: Callable[[str], None] = print) -> None:
        """The run's last word, written even when the disk is full.

        The atomic write needs room for a second copy; overwriting the file in place needs
        none, so a full disk still ends with 'failed' instead of a run that says 'running'
        forever. Never raises: the error that ended the run must not be masked by this one.
        """
        try:
            self.update(force=True, status=status, message=message)
            return
        except OSError:
            pass
        if not self.enabled:
            return
        try:
            overwrite_in_place(self.path, json_bytes(self.state))
        except OSError as exc:
            log(f"could not record the run's status '{status}' in {self.path}: {exc}")

    def on_batch_end(self, eng, meter: EpochMeter) -> None:
        m, epochs = meter, self.state["epochs"]
        spent = time.monotonic() - m.start
        per_batch = spent / m.batch
        eta = per_batch * (m.batches - m.batch) + (epochs - m.epoch) * per_batch * m.batches
        if self.budget_s:
            eta = min(eta, max(0.0, self.budget_s - m.elapsed))
        self.update(epoch=m.epoch, batch=m.batch, train_loss_running=m.running / m.seen, elapsed_s=m.elapsed,
                    train_size=m.train_size, eta_s=eta, fraction=((m.epoch - 1) * m.batches + m.batch) / (epochs * m.batches),
                    lr=eng.opt.param_groups[0]["lr"], data_wait_share=m.wait / max(1e-9, spent))

    def on_epoch_end(self, eng, record: dict) -> None:
        if self.enabled:
            self.update(force=True, history=eng.state.history, epoch=record["epoch"], batch=self.state["batches"])


class DivergenceGuard(Callback):
    """Stops a run whose loss is NaN/inf or whose median of the last three batches exceeds
    ``factor`` x the first batch's: hours at a too-high learning rate teach nothing."""

    def __init__(self, lr: float, factor: float = DIVERGENCE_FACTOR) -> None:
        self.lr = lr
        self.factor = factor
        self.first: float | None = None
        self.recent: list[float] = []

    def on_loss(self, eng, meter: EpochMeter, value: float) -> None:
        if self.first is None:
            self.first = max(value, 1e-3)
        self.recent = (self.recent + [value])[-3:]
        if not math.isfinite(value) or sorted(self.recent)[len(self.recent) // 2] > self.factor * self.first:
            raise TrainingDiverged(
                f"training diverged at epoch {meter.epoch}, batch {meter.batch}: loss {value:.4g} "
                f"(first batch {self.first:.4g}). The learning rate {self.lr:g} is probably too high; "
                f"try 10x lower (e.g. --lr {self.lr / 10:g})."
            )


class StopFlags(Callback):
    """Ends the epoch on the user's CANCEL file (rank 0 looks) or when the time budget is used.

    ``reduce`` (the max over ranks, under DDP) makes every rank leave at the same step:
    a rank that stops alone leaves the others hanging in a collective.
    """

    def __init__(self, run_dir: Path, main: bool, budget_min: float | None,
                 reduce: Callable[[float], float] | None = None) -> None:
        self.cancel = run_dir / CANCEL
        self.main = main
        self.budget_min = budget_min
        self.budget_s = budget_min * 60 if budget_min else None
        self.reduce = reduce

    def budget_reason(self) -> str:
        return f"time budget of {self.budget_min:g} min reached"

    def on_batch_end(self, eng, meter: EpochMeter) -> None:
        reason = ""
        if self.main and self.cancel.exists():
            reason = CANCELLED
        elif self.budget_s and meter.elapsed > self.budget_s:
            reason = self.budget_reason()
        if self.reduce is not None:
            flag = self.reduce(2.0 if reason == CANCELLED else 1.0 if reason else 0.0)
            if flag > 0 and not reason:
                reason = CANCELLED if flag > 1 else self.budget_reason()
        if reason:
            eng.state.stop_reason = reason


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs without a better validation score (0 = never).

    Rank 0 alone validates, so its verdict (``state.early_stop``) is what the engine shares.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, eng, record: dict) -> None:
        eng.state.early_stop = bool(self.patience and eng.state.stale >= self.patience)

    def on_epoch_synced(self, eng) -> None:
        if eng.state.early_stop and not eng.state.stop_reason:
            eng.state.stop_reason = f"early stopping: no improvement for {self.patience} epochs"


class Checkpointer(Callback):
    """model.pt when the epoch is the best so far (the weights validated: the EMA's when on),
    then checkpoint.pt every epoch so a killed run resumes at the next one."""

    def __init__(self, run_dir: Path, enabled: bool, mlflow_run_id: str | None = None) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.mlflow_run_id = mlflow_run_id

    def on_epoch_end(self, eng, record: dict) -> None:
        if not self.enabled:
            return
        if eng.state.best_epoch == record["epoch"]:
            atomic_torch_save(Run.at(self.run_dir).model_file, eng.eval_model.state_dict())
        save_checkpoint(Run.at(self.run_dir).checkpoint_file, eng.state, model=eng.model, optimizer=eng.opt,
                        scheduler=eng.sched, splits=eng.splits, target_mean=eng.task.mean,
                        target_std=eng.task.std, mlflow_run_id=self.mlflow_run_id, ema=eng.ema)


class EpochLog(Callback):
    """One line per epoch for the console (rank 0)."""

    def __init__(self, log: Callable[[str], None], enabled: bool, epochs: int) -> None:
        self.log = log
        self.enabled = enabled
        self.epochs = epochs

    def on_epoch_end(self, eng, record: dict) -> None:
        if self.enabled:
            self.log(f"epoch {record['epoch']}/{self.epochs}: train loss {record['train_loss']:.4f}, "
                     f"{eng.task.epoch_summary(record)} ({record['time_s']:.0f} s at {record['train_size']} px, "
                     f"data wait {100 * record['data_wait_share']:.0f}%)")
