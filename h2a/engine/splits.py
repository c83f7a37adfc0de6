"""Which images train, which validate, which are held out: decided once and saved with the run."""

from __future__ import annotations

import numpy as np

from h2a.data.datasets import Dataset, stratified_split
from h2a.engine.config import TrainConfig, TrainingError
from h2a.engine.tasks import get_task


def make_splits(ds: Dataset, cfg: TrainConfig) -> dict[str, list[str]]:
    """Holdout first (never seen), then train/validation, all stratified by sex x age."""
    meta = get_task(cfg.task).labelled(ds).reset_index(drop=True)
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
