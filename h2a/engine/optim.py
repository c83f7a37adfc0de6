"""Optimisation pieces: the optimizer, the LR schedule, progressive resizing and the EMA.

Kept apart from the loop so bench/bench_train.py times exactly the optimizer a run uses,
and so each piece can be checked without a training run.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from h2a.engine.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """The run's optimizer over the trainable parameters (also what bench_train.py times)."""
    params = [p for p in params if p.requires_grad]
    # One fused kernel instead of a loop over ~200 tensors: Lite0's AdamW step took 3 ms
    # instead of 13 ms on 2 CPU cores (~2% of a batch-32 step; more at small batches).
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


class Schedule:
    """LR schedule. Cosine and one-cycle follow the run's *progress*: the larger of
    steps done / planned and time used / budget, so a time-budgeted run still anneals."""

    def __init__(self, cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.kind = cfg.scheduler
        self.opt = opt
        self.base = [g["lr"] for g in opt.param_groups]
        self.total = max(1, cfg.epochs * steps_per_epoch)
        self.budget = cfg.time_budget_min * 60 if cfg.time_budget_min else None
        self.torch_sched = None
        lrs = torch.optim.lr_scheduler
        if self.kind == "step":
            self.torch_sched = lrs.StepLR(opt, step_size=max(1, cfg.epochs // 3), gamma=0.1)
        elif self.kind == "exponential":
            self.torch_sched = lrs.ExponentialLR(opt, gamma=0.9)
        elif self.kind == "plateau":
            self.torch_sched = lrs.ReduceLROnPlateau(opt, mode="min", factor=0.3, patience=2)
        elif self.kind == "cyclic":
            self.torch_sched = lrs.CyclicLR(opt, base_lr=cfg.lr / 10, max_lr=cfg.lr,
                                            step_size_up=max(1, 2 * steps_per_epoch),
                                            cycle_momentum=cfg.optimizer == "sgd")

    def factor(self, progress: float) -> float:
        p = min(1.0, max(0.0, progress))
        if self.kind == "cosine":
            warm = 0.03
            return p / warm if p < warm else 0.5 * (1 + math.cos(math.pi * (p - warm) / (1 - warm))) * 0.99 + 0.01
        if self.kind == "onecycle":
            peak = 0.25
            if p < peak:
                return 0.04 + 0.96 * p / peak
            return 0.5 * (1 + math.cos(math.pi * (p - peak) / (1 - peak))) * 0.999 + 0.001
        return 1.0

    def progress(self, step: int, elapsed: float) -> float:
        """Share of the run done, in [0, 1]: by steps, or by time when a budget binds first."""
        p = step / self.total
        if self.budget:
            p = max(p, elapsed / self.budget)
        return min(1.0, p)

    def step_batch(self, step: int, elapsed: float) -> None:
        if self.kind in ("cosine", "onecycle"):
            progress = self.progress(step, elapsed)
            for g, base in zip(self.opt.param_groups, self.base):
                g["lr"] = base * self.factor(progress)
        elif self.kind == "cyclic":
            self.torch_sched.step()

    def step_epoch(self, val_loss: float) -> None:
        if self.kind == "plateau":
            self.torch_sched.step(val_loss)
        elif self.kind in ("step", "exponential"):
            self.torch_sched.step()

    def state_dict(self) -> dict:
        if self.torch_sched is None:
            return {}
        state = self.torch_sched.state_dict()
        return {k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, list, type(None)))}

    def load_state_dict(self, state: dict) -> None:
        if self.torch_sched is not None and state:
            merged = self.torch_sched.state_dict()
            merged.update(state)
            self.torch_sched.load_state_dict(merged)


PROGRESSIVE_STEP = 16
PROGRESSIVE_FULL_SHARE = 0.3


def progressive_size(start: int | None, full: int, progress: float) -> int:
    """Training image size at this point of the run: `start` px growing in 16 px steps
    over the first 70% of the run, then `full` px, so the model ends (and its BatchNorm
    statistics settle) at the size it is validated and used at."""
    ramp = max(0.0, progress) / (1.0 - PROGRESSIVE_FULL_SHARE)
    if start is None or start >= full or ramp >= 1.0:
        return full
    return start + int((full - start) * ramp) // PROGRESSIVE_STEP * PROGRESSIVE_STEP


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample a normalised (N, C, H, W) batch to size x size (antialiased bilinear)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def make_ema(model: nn.Module, decay: float):
    """Exponential moving average of the weights (and BN buffers), with timm-style warm-up
    so early epochs are not dominated by the random-ish start. None when decay is 0."""
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
        return averaged * d + current * (1.0 - d)

    return AveragedModel(model, avg_fn=avg, use_buffers=True)
