"""The preprocessing preview's cached views: picker labels, an image at screen size with its
histogram, and augmented samples, each computed once per server (``st.cache_data``, shared
by every session), so a 2000 px radiograph is decoded and shrunk once, not on every rerun."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from h2a.app.state import decoded
from h2a.data import imageio
from h2a.data.preprocess import PreprocessConfig, prepare
from h2a.data.transforms import augment_samples

DISPLAY_SIDE = 768  # the original is shown at screen size: encoding 5 MP for the browser takes seconds
MAX_OPTIONS = 200  # the picker sends only these labels to the browser, never all 12,611


@st.cache_data(show_spinner=False, max_entries=8)
def image_labels(fingerprint: str, _rows: pd.DataFrame) -> dict[str, str]:
    """'id · sex · age' per id, built once per dataset (a per-option table scan is quadratic)."""
    ids = _rows["id"].astype(str).tolist()
    ages = [f"{a:.0f} mo" if pd.notna(a) else "no age" for a in _rows["boneage"].astype(float).tolist()]
    return {i: f"{i} · {s} · {a}" for i, s, a in zip(ids, _rows["sex"].astype(str).tolist(), ages)}


def matching_ids(all_ids: pd.Series, query: str, limit: int = MAX_OPTIONS) -> list[str]:
    """Ids (text) containing ``query`` (any case; an exact id first), at most ``limit``."""
    q = query.strip()
    if not q:
        return all_ids.head(limit).tolist()
    hits = all_ids[all_ids.str.contains(q, case=False, regex=False)].head(limit).tolist()
    return ([q] + [h for h in hits if h != q]) if bool((all_ids == q).any()) else hits


@st.cache_data(show_spinner=False, max_entries=64)
def display_view(path: str, token: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray] | str:
    """(uint8 image at most DISPLAY_SIDE px, 64-bin histogram of the full image), shared
    by every session; the error text for a file that cannot be read."""
    img = decoded(path)
    if isinstance(img, str):
        return img
    counts, _ = np.histogram(img.ravel(), bins=64, range=(0.0, 1.0))
    scale = DISPLAY_SIDE / max(img.shape)
    if scale < 1:
        img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    return imageio.to_uint8(img), counts


@st.cache_data(show_spinner=False, max_entries=64)
def augmented(path: str, token: tuple[int, int] | None, cfg_json: str, seed: int) -> list[np.ndarray] | None:
    """The 8 augmented samples of one image for one config and seed (shared by sessions)."""
    img = decoded(path)
    if isinstance(img, str):
        return None
    cfg = PreprocessConfig(**json.loads(cfg_json))
    # photometric=True: every augmentation training applies (test-time copies are geometric only)
    return augment_samples(prepare(img, cfg), cfg, n=8, seed=seed, photometric=True)
