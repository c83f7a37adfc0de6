"""The pages' one Grad-CAM helper: a radiograph file -> (prepared image, heat map), cached.

Grad-CAM is a backward pass per image, and the Evaluation and Sex pages show up to a few
dozen at once next to an opacity slider. Streamlit reruns the whole page on every widget
move, so the maps are kept with ``st.cache_data`` keyed by (run folder, model.pt mtime,
image file and its mtime, sex input, direction): blending at another opacity reuses
them, and retraining the run or replacing the image computes a fresh one. Reading and
preprocessing the file happen inside the cached call too, so a slider move decodes
nothing either. The map itself always comes from the core ``h2a.inference.cam.run_cam``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from h2a.app.runs_ui import loaded_run, model_mtime
from h2a.run import Run
from h2a.data.imageio import read_image
from h2a.data.preprocess import prepare
from h2a.inference import cam
from h2a.inference.cam import DEFAULT_CAM

__all__ = ["cam_of_file", "clear_cam_cache"]


def _file_mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


@st.cache_data(show_spinner="Computing Grad-CAM…", max_entries=256)
def _cam_of_file(run_dir: str, run_mtime: float, path: str, file_mtime: int, male: bool | None,
                 negative: bool) -> tuple[np.ndarray, np.ndarray]:
    # the mtimes are part of the cache key only: a retrained run or a replaced file misses

    run = loaded_run(run_dir)
    u8 = prepare(read_image(path), run.preprocess)
    return u8, cam.run_cam(run, u8, male, negative=negative)


def cam_of_file(run_dir: str | Path, path: str | Path, male: bool | None = None, *,
                negative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image preprocessed as the run's model sees it, Grad-CAM (H, W) in [0, 1]) of one file.

    ``male`` is the sex input of a bone-age model that takes one (ignored by the core for
    models that do not); ``negative`` flips the direction (bone age: evidence for
    *younger*; sex: evidence for *female*). Raises ``ImageReadError`` when the file cannot
    be decoded (errors are not cached, so a fixed file is read again).
    """
    run_dir, path = str(run_dir), str(path)
    return _cam_of_file(run_dir, model_mtime(run_dir), path, _file_mtime(path),
                        None if male is None else bool(male), bool(negative))


def heatmap_caption(run_dir: str | Path) -> str:
    """Which map is shown and, where ``bench/bench_cam.py --write-run`` measured it for this run,
    how much of its mass falls on the hand and whether it depends on the trained weights."""
    stage, method = DEFAULT_CAM
    text = f"{method} at trunk stage {stage} (finer than the last stage's 4 x 4 grid at 128 px)."
    cam = Run.at(run_dir).record("heatmap") or {}
    for name, s in (cam.get("sets") or {}).items():
        row = next((r for r in s.get("rows", []) if [r["stage"], r["method"]] == [stage, method]), None)
        last = next((r for r in s.get("rows", []) if [r["stage"], r["method"]] == [-1, "gradcam"]), None)
        if row and row.get("hand_share") is not None:
            text += (f" On {s['n']} {name}: {100 * row['hand_share']:.0f}% of the map's mass on the hand"
                     + (f" (last stage: {100 * last['hand_share']:.0f}%)" if last and last.get("hand_share") else "")
                     + f", rank correlation {row['randomisation_rho']:.2f} with a randomised trunk's map.")
    return text


def clear_cam_cache() -> None:
    """Forget every cached map (tests, or after deleting runs to free memory)."""
    _cam_of_file.clear()
