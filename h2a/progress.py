"""Progress reporting shared by core functions, the CLI and the pages.

Core functions take ``progress: ProgressFn | None`` and call it as
``progress(done, total, message)``; the CLI prints, a page draws a bar.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

ProgressFn = Callable[[int, int, str], None]


def noop(done: int, total: int, message: str = "") -> None:
    """Progress sink that ignores everything."""


def report(progress: ProgressFn | None, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(done, total, message)


class StderrProgress:
    """A throttled one-line progress printer for the CLI (stderr, so --json stays clean)."""

    def __init__(self, label: str = "", min_interval: float = 0.5) -> None:
        self.label = label
        self.min_interval = min_interval
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.min_interval:
            return
        self._last = now
        pct = 100.0 * done / total if total else 100.0
        elapsed = now - self._start
        eta = elapsed / done * (total - done) if done else 0.0
        text = f"\r{self.label} {done}/{total} ({pct:5.1f}%) {message} ETA {eta:5.0f}s"
        sys.stderr.write(text[:160])
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
