"""The training state that survives a restart, and the checkpoint that carries it.

``TrainState`` holds what a resumed run needs to continue as if never stopped (epoch,
step, best score, patience count, time used, history, the torch RNG); the checkpoint
keys are fixed, since a run killed by one version may be resumed by the next.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from h2a.engine.config import TrainingError
from h2a.run import atomic_torch_save, safe_load

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "best", "best_epoch", "stale", "elapsed",
                   "history", "splits", "target_mean", "target_std", "rng", "mlflow_run_id")


# What a resume cannot do without (older checkpoints may lack the rest, e.g. "rng" is read plainly).
REQUIRED_KEYS = ("model", "optimizer", "epoch", "step", "best", "best_epoch", "stale", "splits",
                 "target_mean", "target_std", "rng")


class CheckpointError(TrainingError):
    """checkpoint.pt cannot be read or is not a training checkpoint."""


def load_checkpoint(path: Path) -> dict:
    """A run's checkpoint, or a CheckpointError naming the file and what to do.

    Checkpoints are written atomically, so a bad one comes from outside (a failing disk, a
    copy cut short, a file put there by hand); it must not end in a traceback.
    """
    try:
        ckpt = safe_load(path)
    except Exception as exc:  # torch raises many types for a bad zip or pickle
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be resumed from ({first}). Restore "
                              "a good copy, or move it away to start this run again from epoch 1.") from exc
    missing = [k for k in REQUIRED_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(REQUIRED_KEYS)
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (missing {', '.join(missing[:4])}). Restore "
                              "a good copy, or move it away to start this run again from epoch 1.")
    return ckpt


@dataclass
class TrainState:
    """Progress of a run. ``epoch`` is the last finished epoch; lower ``best`` is better."""

    epoch: int = 0
    step: int = 0
    best: float = math.inf
    best_epoch: int = 0
    stale: int = 0
    history: list[dict] = field(default_factory=list)
    # time.monotonic() at the (virtual) start: a resumed run counts the time it used before
    t0: float = field(default_factory=time.monotonic)
    stop_reason: str = ""
    early_stop: bool = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def observe(self, epoch: int, score: float) -> bool:
        """Record an epoch's validation score; True when it is the best so far."""
        if score < self.best:
            self.best, self.best_epoch, self.stale = score, epoch, 0
            return True
        self.stale += 1
        return False

    def to_checkpoint(self) -> dict:
        """The state's own checkpoint entries (the RNG as of now)."""
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "best_epoch": self.best_epoch,
                "stale": self.stale, "elapsed": self.elapsed, "history": self.history,
                "rng": torch.get_rng_state()}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, history: list[dict] | None = None) -> TrainState:
        """The state a checkpoint left; also restores the torch RNG. ``history`` lets the
        caller share one list with progress.json."""
        state = cls(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]), best=float(ckpt["best"]),
                    best_epoch=int(ckpt["best_epoch"]), stale=int(ckpt["stale"]),
                    history=history if history is not None else list(ckpt.get("history", [])),
                    t0=time.monotonic() - float(ckpt.get("elapsed", 0.0)))
        torch.set_rng_state(ckpt["rng"])
        return state


def save_checkpoint(path: Path, state: TrainState, *, model, optimizer, scheduler, splits: dict,
                    target_mean: float, target_std: float, mlflow_run_id: str | None, ema=None) -> None:
    """Write checkpoint.pt atomically: a kill mid-write leaves the previous epoch's."""
    atomic_torch_save(path, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        **state.to_checkpoint(), "splits": splits, "target_mean": target_mean, "target_std": target_std,
        "mlflow_run_id": mlflow_run_id,
        **({"ema": ema.state_dict()} if ema is not None else {}),
    })
