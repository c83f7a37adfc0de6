"""A run's prediction file for one split, what the paired comparisons read
(``h2a.studies.compare``): arm trials write held-out once, a confirmation writes validation
and held-out for the two runs it compares."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from h2a.exports import csv_bytes
from h2a.inference.evaluate import evaluate
from h2a.progress import ProgressFn
from h2a.run import atomic_write_bytes
from h2a.studies.compare import PREDICTION_FILES


def save_predictions(run_dir: Path, task: str, split: str = "holdout", views: int = 0, flip_tta: bool = True,
                     progress: ProgressFn | None = None) -> Path:
    """``RUN/<split>_predictions.csv`` (``PREDICTION_FILES``): ``id, y, pred`` (months) or
    ``id, y, prob`` (P(male)), what the paired comparisons read."""
    res = evaluate(run_dir, split=split, flip_tta=flip_tta, tta_views=views, record=False, progress=progress)
    p = res.predictions
    if task == "boneage":
        frame = pd.DataFrame({"id": p["id"].astype(str), "y": p["boneage"].astype(float),
                              "pred": p["predicted"].astype(float)})
    else:
        frame = pd.DataFrame({"id": p["id"].astype(str), "y": p["male"].astype(int), "prob": p["p_male"].astype(float)})
    path = Path(run_dir) / PREDICTION_FILES[split]
    atomic_write_bytes(path, csv_bytes(frame.sort_values("id")))  # users open it in spreadsheets too
    return path
