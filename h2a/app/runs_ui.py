"""Cached access to trained runs for the pages: loaded models, evaluations, CAM images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from h2a.engine.runs import MODEL


def _mtime(run_dir: str) -> float:
    try:
        return (Path(run_dir) / MODEL).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner=False, max_entries=8)
def _loaded(run_dir: str, mtime: float):
    from h2a.inference.loading import load_run

    return load_run(run_dir)


def loaded_run(run_dir: str | Path):
    """A run's model loaded once per process (and again only when model.pt changes)."""
    return _loaded(str(run_dir), _mtime(str(run_dir)))


@st.cache_data(show_spinner=False, max_entries=32)
def _evaluation(run_dir: str, mtime: float, data: str | None, split: str | None, tta: bool,
                views: int) -> tuple[dict, pd.DataFrame]:
    from h2a.inference.evaluate import evaluate

    result = evaluate(run_dir, data, split=split, flip_tta=tta, tta_views=views)
    return result.metrics, result.predictions


def evaluation(run_dir: str | Path, data: str | None, split: str | None, tta: bool,
               views: int = 0) -> tuple[dict, pd.DataFrame]:
    """(metrics, predictions) of a run on data, computed once per input combination;
    ``views`` augmented copies join the averaged prediction (0 = none)."""
    return _evaluation(str(run_dir), _mtime(str(run_dir)), data, split, tta, int(views))


def cam_for(run_dir: str | Path, image_u8: np.ndarray, male: bool) -> np.ndarray:
    """Grad-CAM heatmap (H, W) in [0, 1] of one preprocessed image under a run's model."""
    from h2a.inference.cam import grad_cam
    from h2a.data.transforms import array_input

    run = loaded_run(run_dir)
    x = array_input(image_u8, run.norm, run.device)
    sex = torch.tensor([1.0 if male else 0.0], device=run.device) if run.model.use_sex else None
    return grad_cam(run.model, x, sex)[0]
