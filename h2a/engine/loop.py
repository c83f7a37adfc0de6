"""The training iteration itself: forward, loss, step, hooks. Everything else is a callback.

``Engine`` holds what one run built (model, optimizer, loader, task, state, callbacks);
``train_one_epoch`` and ``validate`` are the only places that touch batches, so the
per-batch work (one ``float(loss)`` sync, no other) is visible in one screen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from h2a.data.preprocess import PreprocessConfig
from h2a.data.transforms import to_input
from h2a.engine.callbacks import Callback, EpochMeter
from h2a.engine.config import TrainConfig
from h2a.engine.distributed import broadcast_from_main
from h2a.engine.optim import Schedule, progressive_size, resize_batch
from h2a.engine.state import TrainState
from h2a.inference.tasks import Task
from h2a.inference.arrays import predict_arrays

HOOKS = ("on_loss", "on_batch_end", "on_epoch_end", "on_epoch_synced")


@dataclass
class SplitArrays:
    """One split's cache rows and labels, aligned (images that failed to decode dropped)."""

    rows: np.ndarray
    ids: list[str]
    male: np.ndarray  # float32 0/1: the model's sex input
    age: np.ndarray
    y: np.ndarray  # the task's target, unscaled


@dataclass
class Engine:
    """Everything one run built; the loop and the callbacks read it (MONAI's engine)."""

    cfg: TrainConfig
    task: Task
    main: bool
    distributed: bool
    device: torch.device
    run_dir: Path
    pcfg: PreprocessConfig
    cache: object  # TensorCache
    splits: dict[str, list[str]]
    val: SplitArrays
    model: nn.Module
    net: nn.Module  # the model, DDP-wrapped under torchrun
    eval_model: nn.Module  # what is validated and saved: the weight average when there is one
    ema: nn.Module | None
    opt: torch.optim.Optimizer
    sched: Schedule
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    norm: tuple[float, float] | None
    adtype: torch.dtype | None
    channels_last: bool
    loader: torch.utils.data.DataLoader
    sampler: torch.utils.data.Sampler | None
    state: TrainState
    callbacks: list[Callback] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Bound methods of the hooks each callback overrides: the no-ops cost nothing per batch.
        self.hooks: dict[str, list[Callable]] = {
            name: [getattr(cb, name) for cb in self.callbacks if getattr(type(cb), name) is not getattr(Callback, name)]
            for name in HOOKS
        }

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.loader))

    def fire(self, hook: str, *args) -> None:
        for fn in self.hooks[hook]:
            fn(self, *args)

    def inputs(self, batch: dict, meter: EpochMeter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """uint8 batch -> normalised model input at this point's progressive size."""
        x = to_input(batch["image"].to(self.device, non_blocking=True), self.norm)
        meter.train_size = progressive_size(self.cfg.progressive_from, self.pcfg.size,
                                            self.sched.progress(self.state.step, self.state.elapsed))
        x = resize_batch(x, meter.train_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["target"].to(self.device, non_blocking=True)
        sex = batch["sex"].to(self.device, non_blocking=True) if self.cfg.use_sex else None
        return x, y, sex

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.adtype) if self.adtype is not None else nullcontext()

    def backward_step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)


def train_one_epoch(eng: Engine, epoch: int, train_size: int) -> dict:
    """One pass over the training set (or until a stop flag); returns its history record."""
    if eng.sampler is not None:
        eng.sampler.set_epoch(epoch)
    eng.net.train()
    m = EpochMeter(epoch, eng.steps_per_epoch, train_size)
    for b, batch in enumerate(eng.loader, 1):
        m.batch = b
        m.fetched()
        x, y, sex = eng.inputs(batch, m)
        with eng.autocast():
            out = eng.net(x, sex)
        loss = eng.loss_fn(out.float(), y)
        value = float(loss.detach())  # the batch's one host sync
        eng.fire("on_loss", m, value)
        eng.backward_step(loss)
        eng.state.step += 1
        m.elapsed = eng.state.elapsed
        eng.sched.step_batch(eng.state.step, m.elapsed)
        m.add(value, len(y))
        eng.fire("on_batch_end", m)
        if eng.state.stop_reason:
            break
        m.waiting()
    return m.record(eng.opt.param_groups[0]["lr"])


def validate(eng: Engine, record: dict) -> tuple[float, float]:
    """Rank 0's validation of the weights that would be saved; adds the task's figures to
    ``record`` and returns (loss on scaled targets, score where lower is better)."""
    va = eng.val
    raw = predict_arrays(eng.eval_model, eng.cache.take(va.rows), va.male, eng.norm, eng.device,
                         batch_size=max(64, eng.cfg.batch_size))
    with torch.no_grad():
        val_loss = float(eng.loss_fn(torch.from_numpy(raw), torch.from_numpy(eng.task.scale(va.y))))
    record["val_loss"] = val_loss
    figures, score = eng.task.epoch_metrics(raw, va.age, va.male)
    record.update(figures)
    return val_loss, score


def end_epoch(eng: Engine, record: dict) -> None:
    """Validate (rank 0), run the epoch callbacks, share rank 0's verdicts, step the LR."""
    val_loss = math.nan
    if eng.main:
        val_loss, score = validate(eng, record)
        eng.state.observe(record["epoch"], score)
        eng.state.history.append(record)
    eng.fire("on_epoch_end", record)
    if eng.distributed:
        # Only rank 0 validates: share its loss (plateau LR) and its early-stopping verdict.
        val_loss, early = broadcast_from_main([val_loss if eng.main else 0.0, 1.0 if eng.state.early_stop else 0.0],
                                              eng.device)
        eng.state.early_stop = early > 0
    eng.sched.step_epoch(val_loss if math.isfinite(val_loss) else 0.0)
    eng.fire("on_epoch_synced")


def run_epochs(eng: Engine) -> None:
    """From the epoch after the state's last one to the planned last, or to a stop."""
    train_size = eng.pcfg.size
    for epoch in range(eng.state.epoch + 1, eng.cfg.epochs + 1):
        record = train_one_epoch(eng, epoch, train_size)
        train_size = record["train_size"]
        eng.state.epoch = epoch
        end_epoch(eng, record)
        if eng.state.stop_reason:
            break
