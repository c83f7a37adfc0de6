"""Heavy imports off the request path.

A fresh server imports PyTorch, the engine's transforms and Plotly the first time a page
needs them: on 2 cores that is about 2 s of the first visit to Preprocessing (measured by
``bench/bench_pages.py``: 5.9 s cold against 3.0 s in the next session). Started once per
server process, a background thread imports them while the first visitor is still on Home
(the first request already spends ~10 s loading the dataset), so no page pays for them.
Python's per-module import locks make a page that imports the same module at the same time
wait for the thread's import rather than race it.
"""

from __future__ import annotations

import importlib
import logging
import threading

# What pages import lazily and is slow to import. The transforms bring PyTorch, torchvision,
# OpenCV and the preprocessing; Plotly's two are named apiece (its submodules load lazily).
HEAVY_MODULES = ("h2a.data.transforms", "plotly.graph_objects", "plotly.express")

_lock = threading.Lock()
_thread: threading.Thread | None = None
log = logging.getLogger(__name__)


def warm_imports(modules: tuple[str, ...] = HEAVY_MODULES) -> threading.Thread:
    """Start (once per process) the thread that imports ``modules``; returns it."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_import_all, args=(modules,), name="h2a-warm-imports", daemon=True)
            _thread.start()
        return _thread


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional module shows up where a page imports it, with its message
            log.warning("warm-up import of %s failed", name, exc_info=True)
