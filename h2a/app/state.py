"""The app layer's shared state: which dataset is active, cached loads, and the sidebar.

The only h2a module (with the rest of ``h2a/app``) allowed to import streamlit: it wraps
the core in ``st.cache_*`` so every page shares one loaded dataset and one header scan.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from h2a import RESEARCH_NOTE
from h2a.app.plain import plain
from h2a.settings import data_file_roots, get_settings
from h2a.data.datasets import Dataset, DatasetError, load_dataset, scan_headers
from h2a.server import PathNotAllowed, check_data_path
from h2a.analysis import stats
from h2a.analysis.stats import compute_stats, sex_label
from h2a.data import imageio
from h2a.data.demo import ensure_demo
from h2a.data.thumbs import get_thumbnail, placeholder

DEMO_CHOICE = "Demo dataset (synthetic)"
ENV_CHOICE = "H2A_DATA_DIR"
CUSTOM_CHOICE = "Another folder…"


@dataclass
class ActiveData:
    """What a page needs about the active dataset; ``error`` set when it cannot load."""

    path: Path | None
    ds: Dataset | None
    headers: pd.DataFrame | None
    error: str | None = None

    @cached_property
    def frame(self) -> pd.DataFrame:
        """Metadata joined with header facts and a display sex column; built once per loaded
        dataset (the instance is shared by every session), so pages must not modify it."""
        meta = self.ds.meta.copy()
        meta["sex"] = sex_label(meta["male"])
        return meta.join(self.headers)

    @cached_property
    def summary(self) -> dict:
        """``compute_stats`` of the dataset (the ``stats --json`` figures), once per load."""
        return compute_stats(self.ds, self.headers)


def progress_callback(bar, label: str):
    """Adapt a ``st.progress`` element to the core's ProgressFn."""

    def _update(done: int, total: int, message: str = "") -> None:
        frac = done / total if total else 1.0
        bar.progress(min(1.0, frac), text=f"{label}: {plain(message)} {done}/{total}")

    return _update


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Import the heavy libraries (torch, timm, plotly) and describe the default
    architecture in a background thread, once per server process, started by its first
    request: the first visit to a model page then finds them loaded instead of paying
    several seconds of imports inside its render. A page that needs a module still being
    imported waits for that one import (Python's per-module import locks), never twice."""

    def _run() -> None:
        try:
            import plotly.express  # noqa: F401
            import torch  # noqa: F401

            from h2a.data.preprocess import PreprocessConfig  # lazy on purpose: this thread warms the imports up
            from h2a.data.transforms import input_norm
            from h2a.models import list_models

            list_models()
            input_norm("efficientnet_lite0", PreprocessConfig())
        except Exception:  # noqa: BLE001 - only a head start: the page imports for itself
            pass

    thread = threading.Thread(target=_run, name="h2a-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def _store() -> dict:
    """Process-wide memo of loaded datasets keyed by (path, directory mtime token)."""
    return {}


def _token(path: Path) -> tuple:
    """Changes when label CSVs change, so an edited CSV is reloaded without a restart."""
    parts = []
    for csv in sorted(path.glob("*.csv")) + sorted(path.glob("*/*.csv")):
        try:
            st_ = csv.stat()
            parts.append((csv.name, st_.st_size, st_.st_mtime_ns))
        except OSError:
            pass
    return tuple(parts)


def load_active(path: Path) -> ActiveData:
    """Load a dataset and its header facts once per process, with progress the first time."""
    key = (str(path.resolve()), _token(path))
    store = _store()
    if key in store:
        return store[key]
    try:
        ds = load_dataset(path, roots=data_file_roots())  # a shared server: no file read out of the roots
    except DatasetError as exc:
        return ActiveData(path, None, None, str(exc))
    bar = st.progress(0.0, text="Reading image headers…")
    headers = scan_headers(ds, progress=progress_callback(bar, "Reading image headers"))
    bar.empty()
    result = ActiveData(path, ds, headers)
    store[key] = result
    return result


def dataset_at(path: str | Path) -> Dataset:
    """A dataset loaded once per process (again when a label CSV changes), without the
    header scan: a run's own dataset, looked up by id on every rerun of a page (its
    ``paths_by_id`` map is built once on the kept instance). Raises DatasetError."""
    path = Path(path)
    active_key = (str(path.resolve()), _token(path))  # load_active's key: reuse the active dataset
    store = _store()
    active = store.get(active_key)
    if active is not None and active.ds is not None:
        return active.ds
    key = ("labels-only", *active_key)
    if key not in store:
        store[key] = load_dataset(path, roots=data_file_roots())
    return store[key]


def ensure_demo_with_progress() -> Path:
    """The embedded demo dataset, generated on first use with a visible progress bar."""
    settings = get_settings()
    bar = st.empty()
    holder = {"bar": None}

    def _progress(done: int, total: int, message: str = "") -> None:
        if holder["bar"] is None:
            holder["bar"] = bar.progress(0.0, text="Generating the synthetic demo dataset (first use only)…")
        holder["bar"].progress(min(1.0, done / max(total, 1)),
                               text=f"Generating the synthetic demo dataset (first use only): {done}/{total}")

    path = ensure_demo(n=settings.demo_n, seed=settings.demo_seed, progress=_progress)
    bar.empty()
    return path


def sidebar_dataset() -> ActiveData:
    """Sidebar picker for the active dataset; returns it loaded (or with an error)."""
    warm_up()
    settings = get_settings()
    choices = [DEMO_CHOICE]
    if settings.data_dir is not None:
        choices.insert(0, ENV_CHOICE)
    choices.append(CUSTOM_CHOICE)
    with st.sidebar:
        st.subheader("Dataset")
        choice = st.radio("Source", choices, key="dataset_choice", label_visibility="collapsed",
                          format_func=lambda c: f"{c} = {plain(settings.data_dir, 300)}" if c == ENV_CHOICE else c)
        path: Path | None
        if choice == DEMO_CHOICE:
            path = ensure_demo_with_progress()
        elif choice == ENV_CHOICE:
            path = settings.data_dir
        else:
            typed = st.text_input("Folder with the label CSV", key="dataset_custom_path",
                                  placeholder=str(settings.data_roots[0]) if settings.data_roots else "")
            path = None
            if typed.strip():
                try:  # resolved (links, "..", relative) and checked against the shared roots
                    path = check_data_path(typed.strip())
                except PathNotAllowed as exc:
                    st.error(plain(exc, 600))
                    return ActiveData(None, None, None, "that folder is not shared on this server")
        if path is None:
            roots = ", ".join(plain(r, 300) for r in settings.data_roots)
            st.info(f"Type the path of a dataset folder (RSNA layout) under {roots}.")
            return ActiveData(None, None, None, "no folder chosen")
        active = load_active(path)
        if active.error:  # names the folder and its files: text, not Markdown
            st.error(plain(active.error, 600))
        else:
            ds = active.ds
            badge = " · SYNTHETIC" if ds.synthetic else ""
            st.caption(f"**{plain(ds.name)}**{badge}  \n{len(ds.with_images())} images · "
                       f"{plain(', '.join(ds.splits))} · {len(ds.problems)} problems")
        st.caption(RESEARCH_NOTE)
    return active


def require_dataset() -> ActiveData:
    """Sidebar + stop the page with a clear message when no dataset is usable."""
    active = sidebar_dataset()
    if active.ds is None:
        st.warning(f"No usable dataset: {plain(active.error, 600)}. Pick another one in the sidebar.")
        st.stop()
    if active.ds.synthetic:
        st.info("You are looking at the **synthetic demo dataset**: generated hand radiographs, "
                "not real patients. Point H2A at the RSNA data in the sidebar for real figures.",
                icon=":material/science:")
    return active


def file_token(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, part of every cache key of its contents; None when gone."""
    try:
        st_ = os.stat(path)
    except OSError:
        return None
    return st_.st_size, st_.st_mtime_ns


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumbnail(path: str, side: int, token: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    thumb = get_thumbnail(path, side)
    return thumb.image, thumb.error


def thumbnail(path: str, side: int = 192) -> tuple[np.ndarray, str | None]:
    """(uint8 image, error): from memory, else the workspace's on-disk thumbnail cache, else
    one bounded decode. A file that cannot be read gives a placeholder and a message
    naming it; a replaced file (new size or mtime) is read again."""
    token = file_token(path)
    if token is None:
        return placeholder(side), f"{Path(path).name}: file not found"
    return _thumbnail(path, side, token)


def thumb_for(path: str, side: int = 192) -> np.ndarray | str:
    """The thumbnail, or the error text for a file that cannot be read."""
    image, error = thumbnail(path, side)
    return error if error else image


def show_thumb(path: str | None, caption: str, side: int = 192) -> None:
    """One thumbnail in the current container; a placeholder and the reason for a bad file.
    ``caption`` is text (it names the image by its id from the label CSV), never Markdown."""
    if path is None:
        st.image(placeholder(side), caption=plain(caption), width="stretch")
        st.error("image not found")
        return
    image, error = thumbnail(path, side)
    st.image(image, caption=plain(caption), width="stretch")
    if error:
        st.error(plain(error, 600))


@st.cache_data(show_spinner="Measuring intensities on a sample of images (once per dataset; the "
                            "thumbnails are kept on disk)…", max_entries=16)
def _intensity(fingerprint: str, n: int, _ds: Dataset) -> pd.DataFrame:
    return stats.intensity_summary(_ds, n=n)


def intensity_for(ds: Dataset, n: int) -> pd.DataFrame:
    """The dataset's intensity summary on an ``n``-image sample, computed once per server
    (shared by every session) and again only when the data's fingerprint changes."""
    return _intensity(ds.fingerprint, int(n), ds)


@st.cache_data(show_spinner=False, max_entries=8)
def _decoded(path: str, token: tuple[int, int]) -> np.ndarray | str:
    try:
        return imageio.read_image(path)
    except imageio.ImageReadError as exc:
        return str(exc)


def decoded(path: str) -> np.ndarray | str:
    """A full decode of one image, shared by every session (the preprocessing preview's
    sample decodes); the error text for a file that cannot be read."""
    token = file_token(path)
    if token is None:
        return f"{Path(path).name}: file not found"
    return _decoded(path, token)
