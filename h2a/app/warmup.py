"""Heavy imports off the request path.

A fresh server imports PyTorch, the engine's transforms and Plotly the first time a page
needs them: on 2 cores that is about 2 s of the first visit to Preprocessing (measured by
``bench/bench_pages.py``: 5.9 s cold against 3.0 s in the next session). Started once per
server process, a background thread imports them while the first visitor is still on Home
(the first request already spends ~10 s loading the dataset), so no page pays for them.
Python's per-module import locks make a page that imports the same module at the same time
wait for the thread's import rather than race it.

Imported libraries are also why a rerun is slow: Streamlit runs a full ``gc.collect(2)``
after every script run (``runner.postScriptGC``), and with PyTorch, Plotly and pandas loaded
that walks ~500,000 long-lived objects, 0.28 s of a 2-core server per rerun of any page,
twice per page change (py-spy on the server, issue 18). ``freeze_imports`` moves what is
alive after new imports into the permanent generation (``gc.freeze``, CPython's tool for
exactly this), so the post-run collection walks only the run's own objects (0.03 s).
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading

# What pages import lazily and is slow to import. The transforms bring PyTorch, torchvision,
# OpenCV and the preprocessing; Plotly's two are named apiece (its submodules load lazily).
HEAVY_MODULES = ("h2a.data.transforms", "plotly.graph_objects", "plotly.express")

_lock = threading.Lock()
_thread: threading.Thread | None = None
_frozen_at = 0  # len(sys.modules) at the last freeze
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
    freeze_imports()


def freeze_imports() -> bool:
    """When modules were imported since the last call: collect, then freeze every object
    alive now; True when it froze. Called after the warm-up and after each script run, it
    does the work (one full collection, ~0.3-0.5 s) once per batch of new imports, not per
    rerun. What it freezes and later drops is still freed by reference counting; only a
    reference cycle among frozen objects would outlive its use, and module objects do not die."""
    global _frozen_at
    with _lock:
        if len(sys.modules) <= _frozen_at:
            return False
        _frozen_at = len(sys.modules)
    gc.collect()
    gc.freeze()
    return True
