"""One training engine for both tasks (bone-age regression, sex classification).

The same ``train(cfg)`` runs from the CLI, from the app (as a background subprocess of
the CLI) and under ``torchrun`` (DDP, rank-0 logging and saving). CUDA with bf16 autocast
and channels_last when there is a GPU; on CPU float32 channels_last (1.6x faster than
bf16 autocast for EfficientNet-Lite0 on AMX: oneDNN's bf16 depthwise backward is slow) or
bf16 autocast on request. Every epoch ends with an atomic checkpoint, so a killed run
resumes at the next epoch; a cancel flag file, a time budget, early stopping and a
divergence guard end a run cleanly with a clear status.
"""

from __future__ import annotations

import math
import os
import platform
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler

from h2a import RESEARCH_NOTE, __version__
from h2a.data.cache import CachedImageDataset, build_cache
from h2a.settings import dist_env, get_settings
from h2a.data.datasets import Dataset, load_dataset, stratified_split
from h2a.device import amp_dtype, describe_device, resolve_device, use_channels_last
from h2a.inference.metrics import classification_metrics, regression_metrics
from h2a.data.transforms import input_norm, to_input
from h2a.inference.arrays import predict_arrays
from h2a.engine.config import DIVERGENCE_FACTOR, TrainConfig, TrainingDiverged, TrainingError
from h2a.models import create_model, freeze_first, set_bn_momentum, set_drop_path
from h2a.data.preprocess import PreprocessConfig
from h2a.data.transforms import augmentation
from h2a.progress import ProgressFn
from h2a.engine.runs import (
    CANCEL,
    CHECKPOINT,
    CONFIG,
    METADATA,
    MODEL,
    PROGRESS,
    atomic_torch_save,
    atomic_write_json,
    read_json,
    safe_load,
)

# ---------------------------------------------------------------- progress file

class ProgressWriter:
    """Writes progress.json (atomically, throttled) for the app and the CLI to read back."""

    def __init__(self, run_dir: Path, enabled: bool, state: dict, progress: ProgressFn | None = None) -> None:
        self.path = run_dir / PROGRESS
        self.enabled = enabled
        self.state = state
        self.progress = progress
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


# ---------------------------------------------------------------- tracking

class Tracker:
    """MLflow logging from rank 0; a tracking failure is reported, never fatal to training."""

    def __init__(self, enabled: bool, cfg: TrainConfig, run_id: str | None) -> None:
        self.enabled = enabled
        self.run_id = run_id
        self.error: str | None = None
        if not enabled:
            return
        try:
            import mlflow

            self.mlflow = mlflow
            settings = get_settings()
            settings.workspace.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(settings.mlflow_uri)
            mlflow.set_experiment(f"h2a-{cfg.task}")
            run = mlflow.start_run(run_id=run_id, run_name=Path(cfg.out).name)
            self.run_id = run.info.run_id
            if run_id is None:
                params = {k: v for k, v in asdict(cfg).items() if k != "preprocess"}
                params.update({f"pp_{k}": v for k, v in cfg.preprocess.items()})
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        except Exception as exc:  # noqa: BLE001 - tracking must not kill a run
            self.enabled = False
            self.error = f"MLflow tracking disabled: {exc}"

    def log(self, metrics: dict, step: int) -> None:
        if self.enabled:
            try:
                self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                                         if isinstance(v, (int, float)) and v is not None and math.isfinite(v)},
                                        step=step)
            except Exception as exc:  # noqa: BLE001
                self.error = f"MLflow logging failed: {exc}"

    def close(self, status: str) -> None:
        if self.enabled:
            try:
                self.mlflow.end_run(status={"finished": "FINISHED", "cancelled": "KILLED"}.get(status, "FAILED"))
            except Exception:  # noqa: BLE001
                pass


# ---------------------------------------------------------------- pieces

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def make_splits(ds: Dataset, cfg: TrainConfig) -> dict[str, list[str]]:
    """Holdout first (never seen), then train/validation, all stratified by sex x age."""
    meta = ds.labelled() if cfg.task == "boneage" else ds.with_images()[ds.with_images()["male"].notna()]
    meta = meta.reset_index(drop=True)
    if meta.empty:
        raise TrainingError(f"{ds.name}: no images with labels for task {cfg.task!r}")
    strat = meta.assign(boneage=meta["boneage"].fillna(meta["boneage"].median() if meta["boneage"].notna().any() else 0))
    holdout: np.ndarray = np.array([], dtype=int)
    rest = np.arange(len(meta))
    if cfg.holdout_fraction > 0:
        rest, holdout = stratified_split(strat, cfg.holdout_fraction, seed=cfg.seed + 7919)
    if cfg.split == "dataset":
        split = meta["split"].to_numpy()
        train = rest[split[rest] == "train"]
        val = rest[split[rest] == "validation"]
        if len(val) == 0:
            raise TrainingError(f"{ds.name}: --split dataset needs a validation CSV with images; use a stratified split")
    else:
        tr, va = stratified_split(strat.iloc[rest].reset_index(drop=True), cfg.val_fraction, seed=cfg.seed)
        train, val = rest[tr], rest[va]
    if cfg.max_train_images and len(train) > cfg.max_train_images:
        rng = np.random.default_rng(cfg.seed)
        train = np.sort(rng.choice(train, cfg.max_train_images, replace=False))
    if len(train) < 2 or len(val) < 1:
        raise TrainingError(f"{ds.name}: too few labelled images to train ({len(train)} train, {len(val)} validation)")
    ids = meta["id"].astype(str).to_numpy()
    return {"train": ids[train].tolist(), "validation": ids[val].tolist(), "holdout": ids[holdout].tolist()}


def _loss_fn(cfg: TrainConfig) -> nn.Module:
    if cfg.task == "sex":
        return nn.BCEWithLogitsLoss()
    return {"l1": nn.L1Loss(), "mse": nn.MSELoss(), "huber": nn.HuberLoss(delta=1.0)}[cfg.loss]


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


def warm_start(model: nn.Module, source: str | Path) -> tuple[int, int]:
    """Copy every tensor whose name and shape match from an earlier run's model.pt."""
    from h2a.engine.runs import resolve_run

    try:
        path = resolve_run(source) / MODEL
    except FileNotFoundError as exc:
        raise TrainingError(f"--init-from: {exc}") from exc
    if not path.exists():
        raise TrainingError(f"--init-from: {path.parent.name} has no model.pt (not finished?)")
    state = safe_load(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return len(usable), len(own)


# ---------------------------------------------------------------- the engine

def train(cfg: TrainConfig, progress: ProgressFn | None = None, log=print) -> dict:
    """Run (or resume) a training run; returns metadata.json's content.

    Raises TrainingError (incl. TrainingDiverged) with a clear message; the run's
    progress.json then says 'failed' / 'diverged' with the same message.
    """
    cfg.validate()
    env = dist_env()
    if env.enabled and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
    main = env.is_main
    run_dir = Path(cfg.out)
    device = resolve_device(cfg.device, env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    state = {"status": "starting", "pid": os.getpid(), "task": cfg.task, "arch": cfg.arch,
             "device": describe_device(device), "world_size": env.world_size, "epoch": 0,
             "epochs": cfg.epochs, "batch": 0, "batches": 0, "history": [], "message": "",
             "started": time.time()}
    ckpt = None
    if (run_dir / CHECKPOINT).exists():
        old = read_json(run_dir / PROGRESS) or {}
        if old.get("status") == "finished":
            raise TrainingError(f"{run_dir} already holds a finished run; choose another --out")
        ckpt = safe_load(run_dir / CHECKPOINT)
        saved = read_json(run_dir / CONFIG)
        if saved:
            cfg = TrainConfig.from_dict({**saved, "device": cfg.device, "workers": cfg.workers})
        state["history"] = list(ckpt.get("history", []))
        state["started"] = old.get("started", state["started"])
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG, asdict(cfg))
    if main:
        (run_dir / CANCEL).unlink(missing_ok=True)
    writer = ProgressWriter(run_dir, main, state, progress)
    writer.update(force=True)
    tracker = Tracker(main, cfg, ckpt.get("mlflow_run_id") if ckpt else None)
    try:
        result = _train(cfg, ckpt, device, env, writer, tracker, log)
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
        raise
    finally:
        if status == "finished" and state.get("cancelled"):
            status, message = "cancelled", state.get("message", "cancelled by the user")
        writer.update(force=True, status=status, message=message or state.get("message", ""))
        tracker.close(status)
        if env.enabled and dist.is_initialized():
            # Leave together: a rank that tears gloo down while rank 0 still writes the
            # run's metadata can abort the whole job at exit.
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001 - a peer already gone; nothing left to sync
                pass
            dist.destroy_process_group()


def _train(cfg: TrainConfig, ckpt: dict | None, device: torch.device, env, writer: ProgressWriter,
           tracker: Tracker, log) -> dict:
    main = env.is_main
    run_dir = Path(cfg.out)
    _seed_everything(cfg.seed + env.rank)
    pcfg = PreprocessConfig.from_dict(cfg.preprocess)
    ds = load_dataset(cfg.data)
    if ckpt is not None:
        splits = ckpt["splits"]
    else:
        splits = make_splits(ds, cfg)

    # Rank 0 builds the cache; the others wait and then open it.
    writer.update(force=True, status="caching", message="decoding and preprocessing images (once per dataset and config)")
    if main:
        cache = build_cache(ds, pcfg, progress=lambda d, t, m: writer.update(message=f"caching images {d}/{t}"))
    if env.enabled:
        dist.barrier()
    if not main:
        cache = build_cache(ds, pcfg)
    meta = ds.meta.set_index(ds.meta["id"].astype(str))

    def arrays(ids: list[str]) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
        rows = cache.rows(ids)
        keep = cache.ok[rows]
        rows = rows[keep]
        kept = [i for i, k in zip(ids, keep) if k]
        sub = meta.loc[kept]
        male = sub["male"].astype(bool).to_numpy(dtype=np.float32)
        age = sub["boneage"].to_numpy(dtype=np.float32)
        return rows, kept, male, age, (male if cfg.task == "sex" else age)

    tr_rows, tr_ids, tr_male, tr_age, tr_y = arrays(splits["train"])
    va_rows, va_ids, va_male, va_age, va_y = arrays(splits["validation"])
    if cfg.task == "boneage":
        t_mean = float(ckpt["target_mean"]) if ckpt else float(tr_y.mean())
        t_std = float(ckpt["target_std"]) if ckpt else float(tr_y.std() or 1.0)
    else:
        t_mean, t_std = 0.0, 1.0
    tr_target = (tr_y - t_mean) / t_std

    model = create_model(cfg.arch, cfg.task, pretrained=cfg.pretrained and ckpt is None, use_sex=cfg.use_sex,
                         width_mult=cfg.width_mult, dropout=cfg.dropout)
    warm = None
    if cfg.init_from and ckpt is None:
        warm = warm_start(model, cfg.init_from)
        log(f"warm start from {cfg.init_from}: {warm[0]}/{warm[1]} tensors loaded")
    set_bn_momentum(model, cfg.bn_momentum)
    if set_drop_path(model, cfg.drop_path) == 0 and cfg.drop_path != TrainConfig.drop_path:
        log(f"--drop-path is ignored: {cfg.arch} has no stochastic depth")
    frozen = freeze_first(model, cfg.freeze)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    adtype = amp_dtype(device, cfg.amp)
    channels_last = use_channels_last(device, adtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if env.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    ema = make_ema(model, cfg.ema)
    if ema is not None and ckpt is not None and "ema" in ckpt:
        ema.load_state_dict(ckpt["ema"])
    # What is validated and saved: the weight average when there is one.
    eval_model = ema.module if ema is not None else model
    train_set = CachedImageDataset(cache, tr_rows, targets=tr_target, sex=tr_male, transform=augmentation(pcfg))
    sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True) if env.enabled else None
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=len(train_set) > cfg.batch_size,
                        persistent_workers=cfg.workers > 0, generator=g)
    steps_per_epoch = max(1, len(loader))
    opt = make_optimizer(cfg, model.parameters())
    sched = Schedule(cfg, opt, steps_per_epoch)
    loss_fn = _loss_fn(cfg)
    norm = input_norm(cfg.arch, pcfg)
    scaler = torch.amp.GradScaler("cuda", enabled=adtype == torch.float16)
    start_epoch, step, best, best_epoch, stale = 1, 0, math.inf, 0, 0
    elapsed_before = 0.0
    history = writer.state["history"]
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt.get("scheduler", {}))
        start_epoch = int(ckpt["epoch"]) + 1
        step, best, best_epoch, stale = int(ckpt["step"]), float(ckpt["best"]), int(ckpt["best_epoch"]), int(ckpt["stale"])
        elapsed_before = float(ckpt.get("elapsed", 0.0))
        torch.set_rng_state(ckpt["rng"])
        log(f"resuming {run_dir.name} at epoch {start_epoch}/{cfg.epochs}")
    writer.update(force=True, status="running", epoch=start_epoch, batches=steps_per_epoch,
                  n_train=len(tr_rows), n_val=len(va_rows), frozen_blocks=frozen,
                  message=f"{len(tr_rows)} training / {len(va_rows)} validation images on {writer.state['device']}",
                  mlflow_run_id=tracker.run_id, tracking_error=tracker.error)
    log(writer.state["message"])
    t0 = time.monotonic() - elapsed_before
    budget = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    first_loss: float | None = None
    recent: list[float] = []
    stop_reason = ""
    epoch = start_epoch - 1
    train_size = pcfg.size
    for epoch in range(start_epoch, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        ep_start = time.monotonic()
        wait = 0.0
        running, seen = 0.0, 0
        t_fetch = time.monotonic()
        for b, batch in enumerate(loader, 1):
            wait += time.monotonic() - t_fetch
            x = to_input(batch["image"].to(device, non_blocking=True), norm)
            train_size = progressive_size(cfg.progressive_from, pcfg.size,
                                          sched.progress(step, time.monotonic() - t0))
            x = resize_batch(x, train_size)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = batch["target"].to(device, non_blocking=True)
            sex = batch["sex"].to(device, non_blocking=True) if cfg.use_sex else None
            ctx = torch.autocast(device.type, dtype=adtype) if adtype is not None else nullcontext()
            with ctx:
                out = net(x, sex)
            loss = loss_fn(out.float(), y)
            value = float(loss.detach())
            if first_loss is None:
                first_loss = max(value, 1e-3)
            recent = (recent + [value])[-3:]
            if not math.isfinite(value) or sorted(recent)[len(recent) // 2] > DIVERGENCE_FACTOR * first_loss:
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch}, batch {b}: loss {value:.4g} "
                    f"(first batch {first_loss:.4g}). The learning rate {cfg.lr:g} is probably too high; "
                    f"try 10x lower (e.g. --lr {cfg.lr / 10:g})."
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            elapsed = time.monotonic() - t0
            sched.step_batch(step, elapsed)
            running += value * len(y)
            seen += len(y)
            done_frac = ((epoch - 1) * steps_per_epoch + b) / (cfg.epochs * steps_per_epoch)
            eta = (time.monotonic() - ep_start) / b * (steps_per_epoch - b) + \
                (cfg.epochs - epoch) * (time.monotonic() - ep_start) / b * steps_per_epoch
            if budget:
                eta = min(eta, max(0.0, budget - elapsed))
            writer.update(epoch=epoch, batch=b, train_loss_running=running / seen, elapsed_s=elapsed, train_size=train_size,
                          eta_s=eta, fraction=done_frac, lr=opt.param_groups[0]["lr"],
                          data_wait_share=wait / max(1e-9, time.monotonic() - ep_start))
            if main and (run_dir / CANCEL).exists():
                stop_reason = "cancelled by the user"
            elif budget and elapsed > budget:
                stop_reason = f"time budget of {cfg.time_budget_min:g} min reached"
            if env.enabled:
                # Every rank must leave the epoch at the same step, or DDP's collectives hang.
                flag = torch.tensor([2.0 if stop_reason.startswith("cancelled") else 1.0 if stop_reason else 0.0],
                                    device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() > 0 and not stop_reason:
                    stop_reason = "cancelled by the user" if flag.item() > 1 else \
                        f"time budget of {cfg.time_budget_min:g} min reached"
            if stop_reason:
                break
            t_fetch = time.monotonic()
        # ---- validation (rank 0) and checkpoint
        record = {"epoch": epoch, "train_loss": running / max(seen, 1), "lr": opt.param_groups[0]["lr"],
                  "train_size": train_size,
                  "time_s": time.monotonic() - ep_start, "data_wait_share": wait / max(1e-9, time.monotonic() - ep_start)}
        val_loss = math.nan
        if main:
            raw = predict_arrays(eval_model, cache.take(va_rows), va_male, norm, device,
                                 batch_size=max(64, cfg.batch_size))
            with torch.no_grad():
                val_loss = float(loss_fn(torch.from_numpy(raw), torch.from_numpy((va_y - t_mean) / t_std)))
            record["val_loss"] = val_loss
            if cfg.task == "boneage":
                pred = raw * t_std + t_mean
                m = regression_metrics(va_age, pred, va_male.astype(bool))
                record.update(val_mae=m["mae"], val_rmse=m["rmse"], val_within_12=m["within_12_months"])
                score = m["mae"]
            else:
                prob = 1 / (1 + np.exp(-raw))
                m = classification_metrics(va_male, prob)
                record.update(val_accuracy=m["accuracy"], val_auc=m["auc"] if m["auc"] is not None else math.nan)
                score = -(m["auc"] or 0.0)
            improved = score < best
            if improved:
                best, best_epoch, stale = score, epoch, 0
                atomic_torch_save(run_dir / MODEL, eval_model.state_dict())
            else:
                stale += 1
            history.append(record)
            tracker.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            atomic_torch_save(run_dir / CHECKPOINT, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "step": step, "best": best, "best_epoch": best_epoch, "stale": stale,
                "elapsed": time.monotonic() - t0, "history": history, "splits": splits,
                "target_mean": t_mean, "target_std": t_std, "rng": torch.get_rng_state(),
                "mlflow_run_id": tracker.run_id,
                **({"ema": ema.state_dict()} if ema is not None else {}),
            })
            shown = f"val MAE {record['val_mae']:.2f} mo" if cfg.task == "boneage" else f"val AUC {record['val_auc']:.3f}"
            log(f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, {shown} "
                f"({record['time_s']:.0f} s at {train_size} px, data wait {100 * record['data_wait_share']:.0f}%)")
            writer.update(force=True, history=history, epoch=epoch, batch=steps_per_epoch)
        early = bool(cfg.patience and stale >= cfg.patience)
        if env.enabled:
            # Only rank 0 validates: share its loss (plateau LR) and its early-stopping verdict.
            shared = torch.tensor([val_loss if main else 0.0, 1.0 if early else 0.0], device=device)
            dist.broadcast(shared, src=0)
            val_loss, early = float(shared[0]), bool(shared[1] > 0)
        sched.step_epoch(val_loss if math.isfinite(val_loss) else 0.0)
        if early and not stop_reason:
            stop_reason = f"early stopping: no improvement for {cfg.patience} epochs"
        if stop_reason:
            break
    if stop_reason:
        log(stop_reason)
    if stop_reason.startswith("cancelled"):
        writer.state["cancelled"] = True
        writer.state["message"] = stop_reason
    if not main:
        return {}
    return _finish(cfg, model, run_dir, ds, cache, splits, va_rows, va_ids, va_male, va_age, va_y, t_mean, t_std,
                   norm, device, history, best_epoch, stop_reason, warm, frozen, tracker, writer)


def _finish(cfg, model, run_dir, ds, cache, splits, va_rows, va_ids, va_male, va_age, va_y, t_mean, t_std, norm,
            device, history, best_epoch, stop_reason, warm, frozen, tracker, writer) -> dict:
    """Reload the best epoch, compute final validation metrics, write metadata.json."""
    if (run_dir / MODEL).exists():
        model.load_state_dict(safe_load(run_dir / MODEL))
    else:
        atomic_torch_save(run_dir / MODEL, model.state_dict())
    raw = predict_arrays(model, cache.take(va_rows), va_male, norm, device)
    if cfg.task == "boneage":
        metrics = regression_metrics(va_age, raw * t_std + t_mean, va_male.astype(bool))
    else:
        metrics = classification_metrics(va_male, 1 / (1 + np.exp(-raw)), va_age)
    tracker.log({f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=len(history))
    meta = {
        "name": run_dir.name,
        "task": cfg.task,
        "arch": cfg.arch,
        "model": model.config,
        "preprocess": cfg.preprocess,
        "pretrained": cfg.pretrained,
        "target_mean": t_mean,
        "target_std": t_std,
        "dataset": {"path": str(Path(cfg.data).resolve()), "name": ds.name, "fingerprint": ds.fingerprint,
                    "synthetic": ds.synthetic},
        "splits": splits,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "train_config": asdict(cfg),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "stop_reason": stop_reason or "completed all epochs",
        "metrics": metrics,
        "history": history,
        "warm_start": {"from": cfg.init_from, "tensors": warm[0], "of": warm[1]} if warm else None,
        "frozen_blocks": frozen,
        "device": writer.state["device"],
        "train_seconds": sum(h["time_s"] for h in history),
        "mlflow_run_id": tracker.run_id,
        "versions": {"h2a": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "note": RESEARCH_NOTE,
    }
    atomic_write_json(run_dir / METADATA, meta)
    return meta
