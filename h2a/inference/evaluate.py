"""A run's metrics on a dataset (``python -m h2a evaluate`` and the Evaluation page)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from h2a.inference.arrays import predict_arrays
from h2a.inference.loading import LoadedRun, load_run
from h2a.progress import ProgressFn


@dataclass
class EvalResult:
    metrics: dict
    predictions: pd.DataFrame  # id, male, boneage, predicted, error (or p_male...), worst first
    run: LoadedRun
    cache: object  # the TensorCache the images came from (for galleries and CAM)
    rows: np.ndarray  # cache rows aligned with the input order of predictions before sorting


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    split: str | None = None,
    flip_tta: bool = False,
    tta_views: int = 0,
    device: torch.device | None = None,
    progress: ProgressFn | None = None,
) -> EvalResult:
    """Metrics of a run on a dataset.

    ``data`` None means the run's own dataset. ``split``: 'all' (every labelled image,
    the default for another folder), 'validation' or 'holdout' (the run's saved ids,
    the default for its own folder is 'validation'). ``tta_views`` adds that many
    augmented copies (the run's own augmentation ranges) to the averaged prediction.
    """
    from h2a.data.cache import build_cache
    from h2a.data.datasets import load_dataset
    from h2a.engine.runs import resolve_run

    run = load_run(resolve_run(run_dir), device)
    own = str(Path(run.meta["dataset"]["path"]))
    data_path = Path(data) if data else Path(own)
    same = data_path.resolve() == Path(own).resolve()
    split = split or ("validation" if same and not data else "all")
    ds = load_dataset(data_path)
    task = run.task_obj
    labelled = task.labelled(ds)
    if split in ("validation", "holdout"):
        wanted = set(run.meta["splits"].get(split, []))
        if not wanted:
            raise ValueError(f"run {run.path.name} has no {split} ids (train with --holdout-fraction for a holdout)")
        labelled = labelled[labelled["id"].astype(str).isin(wanted)]
    if labelled.empty:
        raise ValueError(f"{ds.name}: no labelled images to evaluate on ({split})")
    cache = build_cache(ds, run.preprocess, progress=progress)
    ids = labelled["id"].astype(str).tolist()
    rows = cache.rows(ids)
    ok = cache.ok[rows]
    labelled, rows = labelled[ok], rows[ok]
    male = labelled["male"].astype(bool).to_numpy()
    raw = predict_arrays(run.model, cache.take(rows), male.astype(np.float32), run.norm, run.device,
                         flip_tta=flip_tta, augment=run.preprocess, views=tta_views, progress=progress)
    out = run.to_output(raw)
    ages = labelled["boneage"].to_numpy()
    metrics = task.metrics(out, ages, male)
    preds = task.predictions(labelled["id"], ages, male, out)
    metrics.update(run=run.path.name, data=str(data_path), split=split, flip_tta=flip_tta, tta_views=tta_views,
                   n_failed_images=int((~ok).sum()))
    return EvalResult(metrics, preds, run, cache, rows)
