"""Cached access to trained runs for the pages: loaded models and evaluations.

Grad-CAM maps live in ``h2a.app.cam_ui`` (cached per image and direction).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from h2a.engine.runs import MODEL


def model_mtime(run_dir: str | Path) -> float:
    """mtime of a run's model.pt (0 when absent): part of every cache key of a run, so a
    retrained model is loaded and evaluated afresh."""
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
    return _loaded(str(run_dir), model_mtime(run_dir))


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
    return _evaluation(str(run_dir), model_mtime(run_dir), data, split, tta, int(views))
