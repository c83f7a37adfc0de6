"""A trained run is a directory (MONAI-bundle style) that describes itself.

``models/<name>/`` holds:

* ``config.json``: the TrainConfig the run was started with (what ``resume`` re-reads);
* ``progress.json``: live status, epoch/batch counters, ETA, per-epoch history;
* ``checkpoint.pt``: last epoch's model/optimiser/scheduler state, written atomically;
* ``model.pt``: the best model's state dict (what evaluation and prediction load);
* ``metadata.json``: task, architecture, preprocessing, dataset fingerprint, split ids,
  metrics, versions and the research-use note;
* ``log.txt``: the training process's output when started from the app;
* ``job.json``: the background process the app started (PID, process group, start time);
* ``.lock``: held by the one process that writes the run (``h2a.engine.lock``).

Everything is read with ``torch.load(..., weights_only=True)``: a run dir is data, not code.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from h2a.engine.tasks import get_task
from h2a.processes import ProcessId
from h2a.settings import get_settings

CONFIG = "config.json"
PROGRESS = "progress.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METADATA = "metadata.json"
LOG = "log.txt"
CANCEL = "CANCEL"
JOB = "job.json"

FINAL_STATES = ("finished", "failed", "cancelled", "diverged")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename so a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name_file(exc, path)
        raise


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, default=_json_default).encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Rewrite a small file in its own blocks: the last resort when the disk is too full for
    the temp file of an atomic write (a reader may see it torn for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save write-then-rename (fsynced): a kill or a full disk leaves the previous file.

    Saving through our own file object keeps the OS error: torch reports a failed write
    as an opaque RuntimeError, with the real cause (ENOSPC, EFBIG) only as its context.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                torch.save(obj, fh)
            except RuntimeError as exc:
                cause = os_error(exc)
                if cause is not None:
                    raise cause from exc
                raise
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name_file(exc, path)
        raise


def _name_file(exc: BaseException, path: Path) -> None:
    """A failed write() names no file; say which one it was."""
    if isinstance(exc, OSError) and not exc.filename:
        exc.filename = str(path)


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind an exception (itself, its cause or its context), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def is_disk_full(exc: BaseException) -> bool:
    """No space left, a file-size limit or a quota: the disk, not the run, is at fault."""
    cause = os_error(exc)
    return cause is not None and cause.errno in DISK_FULL


RUN_FILES = (CONFIG, PROGRESS, CHECKPOINT, MODEL, METADATA, JOB, "calibration.json")


def sweep_temp_files(run_dir: Path) -> list[Path]:
    """Remove the half-written temp files a killed writer left (call only under the run lock)."""
    gone = []
    for name in RUN_FILES:
        for tmp in Path(run_dir).glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def read_json(path: Path) -> dict | None:
    """A JSON file, or None when missing or mid-write garbage (never raises on a bad file)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


@dataclass
class RunSummary:
    """What the runs table shows for one run directory."""

    name: str
    path: Path
    task: str | None
    arch: str | None
    status: str
    epoch: int | None
    epochs: int | None
    metrics: dict
    updated: float
    has_model: bool
    message: str = ""

    @property
    def headline(self) -> float | None:
        """The number runs are ranked by: validation MAE (lower better) or AUC."""
        value = self.metrics.get(get_task(self.task).headline_key)
        return float(value) if value is not None else None


def runs_root() -> Path:
    return get_settings().models_dir


def run_status(run_dir: Path) -> dict:
    """progress.json plus a liveness check: a 'running' run whose process is gone is 'stopped'."""
    prog = read_json(run_dir / PROGRESS) or {}
    status = prog.get("status", "unknown" if not (run_dir / METADATA).exists() else "finished")
    if status in ("running", "starting", "caching"):
        if not writer_alive(run_dir, prog):
            prog["status"] = "stopped"
            prog["message"] = prog.get("message") or "the training process ended without finishing (killed?); start it again to resume"
    prog.setdefault("status", status)
    return prog


def writer_alive(run_dir: Path, prog: dict | None = None) -> bool:
    """Whether the process that writes the run still runs: the app's job (job.json) or the
    training process itself (progress.json), each checked by PID *and* start time, so a
    reused PID does not keep a dead run 'running'. Unknown (another host, no PID) counts as alive."""
    if prog is None:
        prog = read_json(run_dir / PROGRESS) or {}
    procs = [p for p in (ProcessId.from_record(read_json(run_dir / JOB) or {}), ProcessId.from_record(prog)) if p]
    if not procs or any(p.elsewhere() for p in procs):
        return True
    return any(p.alive() for p in procs)


def summarize(run_dir: Path) -> RunSummary:
    meta = read_json(run_dir / METADATA) or {}
    cfg = read_json(run_dir / CONFIG) or {}
    prog = run_status(run_dir)
    try:
        updated = max(p.stat().st_mtime for p in run_dir.iterdir())
    except ValueError:
        updated = run_dir.stat().st_mtime
    return RunSummary(
        name=run_dir.name,
        path=run_dir,
        task=meta.get("task") or cfg.get("task"),
        arch=meta.get("arch") or cfg.get("arch"),
        status=prog.get("status", "unknown"),
        epoch=prog.get("epoch"),
        epochs=prog.get("epochs") or cfg.get("epochs"),
        metrics=meta.get("metrics", {}),
        updated=updated,
        has_model=(run_dir / MODEL).exists() and (run_dir / METADATA).exists(),
        message=prog.get("message", ""),
    )


def list_runs(root: Path | None = None, task: str | None = None) -> list[RunSummary]:
    """Every run directory under the models folder, newest first."""
    root = root or runs_root()
    if not root.exists():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and ((d / CONFIG).exists() or (d / METADATA).exists()):
            s = summarize(d)
            if task is None or s.task == task:
                out.append(s)
    return sorted(out, key=lambda s: s.updated, reverse=True)


def best_run(task: str = "boneage", root: Path | None = None) -> RunSummary | None:
    """The finished run with the best validation figure (lowest MAE / highest AUC)."""
    done = [r for r in list_runs(root, task) if r.has_model and r.headline is not None]
    if not done:
        return None
    return (min if get_task(task).lower_is_better else max)(done, key=lambda r: r.headline)


def resolve_run(name_or_path: str | Path) -> Path:
    """A run given as a path or as a name inside the models folder."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    candidate = runs_root() / str(name_or_path)
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(f"no run at {p} or {candidate}")
