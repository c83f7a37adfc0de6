"""Building a run: data and splits, the model (fresh, warm-started or resumed), the loader,
the optimizer and the callbacks, assembled into an ``Engine`` for the loop.

The order of construction is the old trainer's: a fresh run draws its random numbers
(model init, then the loader's own generator) in the same sequence, so seeds reproduce.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from h2a.data.cache import CachedImageDataset, build_cache
from h2a.data.datasets import Dataset, load_dataset
from h2a.data.preprocess import PreprocessConfig
from h2a.data.transforms import augmentation, input_norm
from h2a.device import choose_amp, use_channels_last
from h2a.engine.callbacks import (
    Checkpointer,
    DivergenceGuard,
    EarlyStopping,
    EpochLog,
    ProgressFile,
    StopFlags,
)
from h2a.engine.config import TrainConfig, TrainingError
from h2a.engine.distributed import all_reduce_max, barrier
from h2a.engine.loop import Engine, SplitArrays
from h2a.engine.optim import Schedule, make_ema, make_optimizer
from h2a.run import Run, load_weights, training_summary
from h2a.engine.splits import make_splits
from h2a.engine.state import TrainState
from h2a.inference.tasks import Task, get_task
from h2a.engine.tracking import MLflowTracker
from h2a.models import H2AModel, create_model, freeze_first, set_bn_momentum, set_drop_path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def open_cache(ds: Dataset, pcfg: PreprocessConfig, main: bool, distributed: bool, writer: ProgressFile):
    """Rank 0 builds the tensor cache; the others wait and then open it."""
    writer.update(force=True, status="caching", message="decoding and preprocessing images (once per dataset and config)")
    if main:
        cache = build_cache(ds, pcfg, progress=lambda d, t, m: writer.update(message=f"caching images {d}/{t}"))
    if distributed:
        barrier()
    if not main:
        cache = build_cache(ds, pcfg)
    return cache


def split_arrays(cache, meta, ids: list[str], task: Task) -> SplitArrays:
    """A split's rows and labels, without the images the cache could not decode."""
    rows = cache.rows(ids)
    keep = cache.ok[rows]
    rows = rows[keep]
    kept = [i for i, k in zip(ids, keep) if k]
    sub = meta.loc[kept]
    male = sub["male"].astype(bool).to_numpy(dtype=np.float32)
    age = sub["boneage"].to_numpy(dtype=np.float32)
    return SplitArrays(rows, kept, male, age, task.target(male, age))


def warm_start(model: H2AModel, source: str | Path) -> dict:
    """Copy every tensor whose name and shape match from an earlier run's best weights (a
    shipped model's too). Returns metadata.json's ``warm_start`` record, with the source's own
    training (epochs, input size, time, its own warm start), so a two-stage run describes its
    whole history even where the source folder is not shipped with it."""
    try:
        run = Run.open(source)
    except FileNotFoundError as exc:
        raise TrainingError(f"--init-from: {exc}") from exc
    if run.weights is None:
        raise TrainingError(f"--init-from: {run.name} has no model.pt (not finished?)")
    state = model.upgrade_state_dict(load_weights(run.path))  # a run saved with an older key layout
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return {"from": str(source), "tensors": len(usable), "of": len(own), "source": training_summary(run.meta or {})}


def build_model(cfg: TrainConfig, ckpt: dict | None, log) -> tuple[nn.Module, dict | None, int]:
    """The model with its training-time settings; returns (model, warm-start record, frozen blocks)."""
    model = create_model(cfg.arch, cfg.task, pretrained=cfg.pretrained and ckpt is None, use_sex=cfg.use_sex,
                         width_mult=cfg.width_mult, dropout=cfg.dropout, weights=getattr(cfg, "weights", None))
    warm = None
    if cfg.init_from and ckpt is None:
        warm = warm_start(model, cfg.init_from)
        log(f"warm start from {cfg.init_from}: {warm['tensors']}/{warm['of']} tensors loaded")
    set_bn_momentum(model, cfg.bn_momentum)
    if set_drop_path(model, cfg.drop_path) == 0 and cfg.drop_path != TrainConfig.drop_path:
        log(f"--drop-path is ignored: {cfg.arch} has no stochastic depth")
    frozen = freeze_first(model, cfg.freeze)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    return model, warm, frozen


def place_model(model: nn.Module, cfg: TrainConfig, device: torch.device, distributed: bool,
                log=lambda m: None):
    """Device, memory format and DDP wrapper; returns (model, net, autocast dtype, channels_last)."""
    model.to(device)
    adtype, why = choose_amp(device, cfg.amp)
    log(f"precision: {why} (--amp {cfg.amp})")
    channels_last = use_channels_last(device, adtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, net, adtype, channels_last


def make_loader(cfg: TrainConfig, dataset: CachedImageDataset, device: torch.device, distributed: bool):
    """Shuffled batches (a DistributedSampler's share under DDP); returns (loader, sampler)."""
    sampler = DistributedSampler(dataset, shuffle=True, seed=cfg.seed, drop_last=True) if distributed else None
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=len(dataset) > cfg.batch_size,
                        persistent_workers=cfg.workers > 0, generator=g)
    return loader, sampler


def make_callbacks(cfg: TrainConfig, main: bool, distributed: bool, device: torch.device, writer: ProgressFile,
                   tracker: MLflowTracker, log) -> list:
    """The run's handlers, in the order they see each event.

    The progress file comes after the checkpointer: a reader that sees epoch N in
    progress.json's history can rely on checkpoint.pt holding epoch N (resume, the app).
    """
    run_dir = Path(cfg.out)
    reduce = functools.partial(all_reduce_max, device=device) if distributed else None
    return [DivergenceGuard(cfg.lr), StopFlags(run_dir, main, cfg.time_budget_min, reduce), tracker,
            Checkpointer(run_dir, main, tracker.run_id), EpochLog(log, main, cfg.epochs), writer,
            EarlyStopping(cfg.patience)]


def build_engine(cfg: TrainConfig, ckpt: dict | None, device: torch.device, env, writer: ProgressFile,
                 tracker: MLflowTracker, log) -> tuple[Engine, dict]:
    """Everything the loop needs; also returns facts for metadata.json (dataset, warm start, freeze)."""
    main, distributed = env.is_main, env.enabled
    seed_everything(cfg.seed + env.rank)
    pcfg = PreprocessConfig.from_dict(cfg.preprocess)
    ds = load_dataset(cfg.data)
    splits = ckpt["splits"] if ckpt is not None else make_splits(ds, cfg)
    cache = open_cache(ds, pcfg, main, distributed, writer)
    meta = ds.meta.set_index(ds.meta["id"].astype(str))
    task = get_task(cfg.task)
    tr, va = (split_arrays(cache, meta, splits[k], task) for k in ("train", "validation"))
    if ckpt is not None:
        task = get_task(cfg.task, float(ckpt["target_mean"]), float(ckpt["target_std"]))
    else:
        task.fit_scaling(tr.y)
    model, warm, frozen = build_model(cfg, ckpt, log)
    model, net, adtype, channels_last = place_model(model, cfg, device, distributed, log)
    ema = make_ema(model, cfg.ema)
    if ema is not None and ckpt is not None and "ema" in ckpt:
        ema.load_state_dict(ckpt["ema"])
    train_set = CachedImageDataset(cache, tr.rows, targets=task.scale(tr.y), sex=tr.male, transform=augmentation(pcfg))
    loader, sampler = make_loader(cfg, train_set, device, distributed)
    opt = make_optimizer(cfg, model.parameters())
    sched = Schedule(cfg, opt, max(1, len(loader)))
    eng = Engine(cfg=cfg, task=task, main=main, distributed=distributed, device=device, run_dir=Path(cfg.out),
                 pcfg=pcfg, cache=cache, splits=splits, val=va, model=model, net=net,
                 eval_model=ema.module if ema is not None else model, ema=ema, opt=opt, sched=sched,
                 scaler=torch.amp.GradScaler("cuda", enabled=adtype == torch.float16), loss_fn=task.loss(cfg.loss),
                 norm=input_norm(cfg.arch, pcfg), adtype=adtype, channels_last=channels_last, loader=loader,
                 sampler=sampler, state=restore_state(ckpt, opt, sched, writer.state["history"]),
                 callbacks=make_callbacks(cfg, main, distributed, device, writer, tracker, log))
    return eng, {"dataset": ds, "warm": warm, "frozen": frozen, "n_train": len(tr.rows)}


def restore_state(ckpt: dict | None, opt: torch.optim.Optimizer, sched: Schedule, history: list[dict]) -> TrainState:
    """A fresh state, or the checkpoint's (optimizer, schedule and RNG included)."""
    if ckpt is None:
        return TrainState(history=history)
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt.get("scheduler", {}))
    return TrainState.from_checkpoint(ckpt, history=history)

