"""Cached access to trained runs for the pages: loaded models and evaluations.

Evaluations never block a page's first render. ``evaluation_or_pending`` answers at once:
the result kept in this process or on disk (``h2a.inference.eval_store``, shared by every
server, session and restart), or a ``Pending`` job computed in a background thread. The
job registry is one per server (``st.cache_resource``), keyed like the disk store, so ten
sessions opening the same page start one evaluation, and a single worker thread keeps
two CPUs from being split between evaluations. ``pending_status`` is a fragment that
polls the jobs every second, shows their progress and reruns the page when they finish.
Why threads, not a detached process: the evaluation is a few minutes of torch in this
process at most once per (model, data, settings), and the disk store makes it survive
a restart; a process would need its own job files, logs and clean-up for no gain. The
worker is a niced daemon thread (``_Worker``): an evaluation neither slows the pages other
users are on nor keeps a stopped server from exiting.

Grad-CAM maps live in ``h2a.app.cam_ui`` (cached per image and direction).
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import streamlit as st

from h2a.app.plain import plain
from h2a.run import MODEL, Run, weights_file
from h2a.inference import eval_store
from h2a.inference.eval_store import EvalKey
from h2a.processes import lower_priority
from h2a.app.state import dataset_at
from h2a.data.datasets import DatasetError
from h2a.inference.loading import load_run

KEEP_RESULTS = 32  # evaluations kept in memory per server (each a few hundred KB)
POLL_S = 1.0


def model_mtime(run_dir: str | Path) -> float:
    """mtime of a run's model.pt (0 when absent): part of every cache key of a run, so a
    retrained model is loaded and evaluated afresh."""
    try:
        return (weights_file(Path(run_dir)) or Path(run_dir) / MODEL).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner=False, max_entries=8)
def _loaded(run_dir: str, mtime: float):
    return load_run(run_dir)


def loaded_run(run_dir: str | Path):
    """A run's model loaded once per process (and again only when model.pt changes)."""
    return _loaded(str(run_dir), model_mtime(run_dir))


# ------------------------------------------------------------------ evaluations


@dataclass
class Pending:
    """An evaluation being computed: what the status line shows."""

    name: str
    key: EvalKey
    n_hint: int | None
    future: Future
    done: int = 0
    total: int = 0
    message: str = ""
    started: float = field(default_factory=time.monotonic)

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.done, self.total, self.message = done, total, message

    def text(self) -> str:
        n = self.total or self.n_hint
        images = f" on {n:,} images" if n else ""
        step = f": {self.message} {self.done:,}/{self.total:,}" if self.total else ""
        return f"Evaluating {self.name}{images}… ({time.monotonic() - self.started:.0f} s{step})"

    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


class _Worker:
    """One niced daemon thread running submitted calls in order.

    Why not ``ThreadPoolExecutor``: its workers are joined at interpreter exit, so a server
    stopped (Ctrl-C, SIGTERM) during a 20-minute evaluation did not exit until the
    evaluation ended. A daemon thread ends with the process, and the disk store only ever
    holds finished evaluations (written atomically). Niced (this thread and the PyTorch
    threads it starts): the pages users are looking at come first."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self.queue.put((future, fn, args, kwargs))
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
        return future

    def _run(self) -> None:
        lower_priority(thread_only=True)
        while True:
            future, fn, args, kwargs = self.queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)


class _Evaluations:
    """Per-server registry: finished results (LRU) and running jobs, keyed by EvalKey."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worker = _Worker("h2a-eval")
        self.results: OrderedDict[EvalKey, tuple[dict, pd.DataFrame]] = OrderedDict()
        self.jobs: dict[EvalKey, Pending] = {}

    def remember(self, key: EvalKey, result: tuple[dict, pd.DataFrame]) -> None:
        with self.lock:
            self.results[key] = result
            self.results.move_to_end(key)
            while len(self.results) > KEEP_RESULTS:
                self.results.popitem(last=False)

    def get(self, key: EvalKey, run_dir: Path, data: str | None, name: str,
            n_hint: int | None) -> tuple[dict, pd.DataFrame] | Pending:
        with self.lock:
            if key in self.results:
                self.results.move_to_end(key)
                return self.results[key]
            job = self.jobs.get(key)
        if job is not None:
            return self._finished(key, job)
        hit = eval_store.load(key)  # a few ms: another server or an earlier start computed it
        if hit is not None:
            self.remember(key, hit)
            return hit
        with self.lock:
            job = self.jobs.get(key)
            if job is None:
                job = Pending(name, key, n_hint, Future())
                job.future = self.worker.submit(eval_store.evaluate_cached, key, run_dir, data, progress=job.progress)
                self.jobs[key] = job
        return self._finished(key, job)

    def _finished(self, key: EvalKey, job: Pending) -> tuple[dict, pd.DataFrame] | Pending:
        """The job's result once done (a failure raises here, once, and the next call retries)."""
        if not job.future.done():
            return job
        with self.lock:
            self.jobs.pop(key, None)
        result = job.future.result()  # re-raises the evaluation's error
        self.remember(key, result)
        return result


@st.cache_resource(show_spinner=False)
def _evaluations() -> _Evaluations:
    return _Evaluations()


def evaluation_or_pending(run_dir: str | Path, data: str | None, data_fingerprint: str, split: str | None,
                          tta: bool, views: int = 0, *, n_hint: int | None = None
                          ) -> tuple[dict, pd.DataFrame] | Pending:
    """(metrics, predictions) of a run on data when known (this process or the disk
    store), else the Pending background job that computes it; never evaluates here.

    ``data`` None is the run's own dataset; ``data_fingerprint`` is that data's
    fingerprint (part of the key, so changed images are a miss). Raises the evaluation's
    ValueError / FileNotFoundError / KeyError once when it failed (the next call retries).
    The predictions are a copy: a page may change them freely."""
    key = eval_store.eval_key(run_dir, data, data_fingerprint, split, tta, views)
    out = _evaluations().get(key, Path(run_dir), data, Path(run_dir).name, n_hint)
    if isinstance(out, Pending):
        return out
    metrics, preds = out
    return copy.deepcopy(metrics), preds.copy()


def evaluation(run_dir: str | Path, data: str | None, data_fingerprint: str, split: str | None, tta: bool,
               views: int = 0) -> tuple[dict, pd.DataFrame]:
    """The same, waiting for the answer (for callers that cannot show a pending state)."""
    out = evaluation_or_pending(run_dir, data, data_fingerprint, split, tta, views)
    if isinstance(out, Pending):
        out.future.result()
        return evaluation_or_pending(run_dir, data, data_fingerprint, split, tta, views)
    return out


@st.fragment(run_every=POLL_S)
def pending_status(jobs: list[Pending]) -> None:
    """Progress of running evaluations, refreshed every second; reruns the whole page
    when all are done, so their figures fill in."""
    if all(j.future.done() for j in jobs):
        st.rerun(scope="app")
    for job in jobs:
        if job.future.done():
            st.caption(f"{plain(job.name)}: done")  # a run's folder name
        else:
            st.progress(job.fraction(), text=plain(job.text(), 400))
    st.caption("The first evaluation of a run with these settings is computed once and kept on disk: "
               "later visits, sessions and server restarts show it at once.")


def split_source(run_dir: str | Path, split: str, active) -> tuple[str | None, str]:
    """Where a run's validation or held-out images are read from, and that data's fingerprint.

    The run's own folder when this machine has it (None); else the active dataset when it
    holds every id of the split (the same images copied elsewhere: a shipped model's RSNA
    thumbnails on another machine); else FileNotFoundError saying what to do, so a page shows
    a way forward instead of a missing path."""
    meta = Run.at(run_dir).meta or {}
    info = meta.get("dataset") or {}
    if info.get("path") and Path(info["path"]).is_dir():
        return None, run_data_fingerprint(run_dir)
    wanted = {str(i) for i in (meta.get("splits") or {}).get(split, [])}
    if wanted and wanted <= set(active.meta["id"].astype(str)):
        return str(active.root), active.fingerprint
    raise FileNotFoundError(
        f"the run's own images ({info.get('name') or 'its dataset'}, recorded at {info.get('path')}) are not on "
        f"this machine, and {active.name} does not hold its {len(wanted)} {split} images: choose your copy of "
        f"{info.get('name') or 'them'} in the sidebar (Another folder), or evaluate on all images of {active.name}")


def run_data_fingerprint(run_dir: str | Path) -> str:
    """Fingerprint of a run's own dataset as it is now (the one recorded at training when
    the folder cannot be read): the data part of an evaluation's key."""
    info = (Run.at(run_dir).meta or {}).get("dataset") or {}
    try:
        return dataset_at(info["path"]).fingerprint
    except (DatasetError, KeyError, TypeError, OSError):
        return str(info.get("fingerprint", ""))
