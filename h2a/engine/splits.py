"""Which images train, which validate, which are held out: decided once and saved with the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from h2a.data.datasets import Dataset, DatasetError, load_dataset, stratified_split
from h2a.engine.config import TrainConfig, TrainingError
from h2a.inference.tasks import get_task


def make_splits(ds: Dataset, cfg: TrainConfig) -> dict[str, list[str]]:
    """Holdout first (never seen), then train/validation, all stratified by sex x age."""
    meta = get_task(cfg.task).labelled(ds).reset_index(drop=True)
    if meta.empty:
        raise TrainingError(f"{ds.name}: no images with labels for task {cfg.task!r}")
    strat = meta.assign(boneage=meta["boneage"].fillna(meta["boneage"].median() if meta["boneage"].notna().any() else 0))
    holdout: np.ndarray = np.array([], dtype=int)
    rest = np.arange(len(meta))
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    if cfg.holdout_fraction > 0:
        rest, holdout = stratified_split(strat, cfg.holdout_fraction, seed=seed + 7919)
    if cfg.split == "dataset":
        split = meta["split"].to_numpy()
        train = rest[split[rest] == "train"]
        val = rest[split[rest] == "validation"]
        if len(val) == 0:
            raise TrainingError(f"{ds.name}: --split dataset needs a validation CSV with images; use a stratified split")
    else:
        tr, va = stratified_split(strat.iloc[rest].reset_index(drop=True), cfg.val_fraction, seed=seed)
        train, val = rest[tr], rest[va]
    if cfg.max_train_images and len(train) > cfg.max_train_images:
        rng = np.random.default_rng(seed)
        train = np.sort(rng.choice(train, cfg.max_train_images, replace=False))
    if len(train) < 2 or len(val) < 1:
        raise TrainingError(f"{ds.name}: too few labelled images to train ({len(train)} train, {len(val)} validation)")
    ids = meta["id"].astype(str).to_numpy()
    if cfg.exclude_ids:
        # After the split, so excluding ids moves no image between validation and held-out.
        train = train[~np.isin(ids[train], sorted(read_id_list(cfg.exclude_ids)))]
    return {"train": ids[train].tolist(), "validation": ids[val].tolist(), "holdout": ids[holdout].tolist()}


def read_id_list(source: str | Path) -> set[str]:
    """Image ids from a dataset folder, a CSV with an id column, or one id per line."""
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            return set(load_dataset(path).meta["id"].astype(str))
        except DatasetError as exc:
            raise TrainingError(f"--exclude-ids {path}: {exc}") from exc
    if not path.is_file():
        raise TrainingError(f"--exclude-ids {path}: no such file or folder")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text.strip() else ""
    if "," in first:
        frame = pd.read_csv(path, dtype=str)
        col = next((c for c in frame.columns if c.strip().lower() == "id"), None)
        if col is None:
            raise TrainingError(f"--exclude-ids {path}: a CSV needs an 'id' column (found {list(frame.columns)})")
        return set(frame[col].dropna().str.strip())
    return {line.strip() for line in text.splitlines() if line.strip()}
