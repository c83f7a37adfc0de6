"""A trained run is a directory (MONAI-bundle style) that describes itself.

``models/<name>/`` holds:

* ``config.json``: the TrainConfig the run was started with (what ``resume`` re-reads);
* ``progress.json``: live status, epoch/batch counters, ETA, per-epoch history;
* ``checkpoint.pt``: last epoch's model/optimiser/scheduler state, written atomically;
* ``model.pt``: the best model's state dict (what evaluation and prediction load);
* ``metadata.json``: task, architecture, preprocessing, dataset fingerprint, split ids,
  metrics, versions and the research-use note;
* ``log.txt``: the training process's output when started from the app.

Everything is read with ``torch.load(..., weights_only=True)``: a run dir is data, not code.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from h2a.engine.tasks import get_task
from h2a.settings import get_settings
from h2a.processes import pid_alive

CONFIG = "config.json"
PROGRESS = "progress.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METADATA = "metadata.json"
LOG = "log.txt"
CANCEL = "CANCEL"

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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=_json_default).encode())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    if status in ("running", "starting"):
        pid = prog.get("pid")
        job = read_json(run_dir / "job.json") or {}
        pid = job.get("pid", pid)
        if pid and not pid_alive(int(pid)):
            prog["status"] = "stopped"
            prog["message"] = prog.get("message") or "the training process ended without finishing (killed?); start it again to resume"
    prog.setdefault("status", status)
    return prog


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
