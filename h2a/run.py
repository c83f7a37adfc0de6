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
* ``calibration.json``: temperature and conformal widths fitted on validation;
* ``sites/<name>/``: site profiles (``h2a adapt``); ``model.safetensors`` in a shipped run;
* ``.lock``: held by the one process that writes the run (``h2a.engine.lock``).

``Run`` is the one object that knows these names; every other module asks it.

Everything is read with ``torch.load(..., weights_only=True)``: a run dir is data, not code.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from h2a import HEADLINE
from h2a.processes import ProcessId
from h2a.settings import get_settings

CONFIG = "config.json"
PROGRESS = "progress.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
SHIPPED_WEIGHTS = "model.safetensors"  # a shipped run's weights (models/<name>/, committed)
METADATA = "metadata.json"
LOG = "log.txt"
CANCEL = "CANCEL"
JOB = "job.json"
CALIBRATION = "calibration.json"
SITES = "sites"  # RUN/sites/<site>/site.json (h2a.inference.site_profile)

FINAL_STATES = ("finished", "failed", "cancelled", "diverged")

# A run's name is its folder's name: safe in a path, a URL and a shell without quoting.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}")
RUN_NAME_RULE = "letters, digits, '.', '-' and '_' (starting with a letter or digit, at most 81 characters)"


def default_run_name(task: str, arch: str) -> str:
    """What a run is called when its starter names none: task, model and the time."""
    return f"{task}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_name(name: str) -> str:
    """``name`` stripped, or ValueError saying the rule."""
    name = str(name).strip()
    if not RUN_NAME.fullmatch(name):
        raise ValueError(f"run name {name!r}: use {RUN_NAME_RULE}")
    return name


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write-then-rename (fsynced) so a reader (or a kill) never sees half a file; a failure
    removes the temp file and names ``path`` in the error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name_file(exc, path)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


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
    """torch.save write-then-rename: a kill or a full disk leaves the previous file.

    Saving through our own file object keeps the OS error: torch reports a failed write
    as an opaque RuntimeError, with the real cause (ENOSPC, EFBIG) only as its context.
    """
    def write(fh: BinaryIO) -> None:
        try:
            torch.save(obj, fh)
        except RuntimeError as exc:
            cause = os_error(exc)
            if cause is not None:
                raise cause from exc
            raise

    _atomic_write(path, write)


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


def weights_file(run_dir: Path) -> Path | None:
    """The run's best weights: model.pt (a trained run) or model.safetensors (a shipped one)."""
    for name in (MODEL, SHIPPED_WEIGHTS):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The best weights as a float32 state dict (shipped weights may be stored in half precision)."""
    path = weights_file(run_dir)
    if path is None:
        raise FileNotFoundError(f"{Path(run_dir).name}: no model.pt or model.safetensors")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    return safe_load(path)


def _json_file(filename: str, doc: str) -> property:
    """A record read fresh on each access: None when it is missing or half written."""
    return property(lambda self: read_json(self.path / filename), doc=doc)


def _file(filename: str, doc: str = "") -> property:
    return property(lambda self: self.path / filename, doc=doc or f"The folder's {filename}.")


@dataclass(frozen=True)
class JobFolder:
    """A folder a background job writes: ``job.json`` (the process), ``log.txt`` and a live
    ``progress.json``. Training runs, study jobs and analysis jobs all have this shape."""

    path: Path

    @classmethod
    def at(cls, path: str | Path):
        """The folder at exactly ``path`` (which may not exist yet)."""
        return cls(Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    progress = _json_file(PROGRESS, "Live status: stage or epoch, counters, ETA, message (and a run's history).")
    job = _json_file(JOB, "The background process that writes the folder (PID, process group, start time).")
    progress_file = _file(PROGRESS)
    job_file = _file(JOB)
    log_file = _file(LOG)

    def write_progress(self, prog: dict) -> None:
        atomic_write_json(self.path / PROGRESS, prog)

    def write_job(self, job: dict) -> None:
        atomic_write_json(self.path / JOB, job)


@dataclass(frozen=True)
class Run(JobFolder):
    """One run folder. The only code that knows the names of a run's records: everything else
    asks a ``Run`` (``Run.open("name").meta``), so a new record or a renamed file is one edit
    here. Records are read fresh on each access (a live run rewrites ``progress``); a missing
    or mid-write record reads as None, never an exception."""

    @classmethod
    def open(cls, name_or_path: str | Path) -> "Run":
        """A run given as a folder, a name in the models folder, or a shipped model's name."""
        return cls(resolve_run(name_or_path))

    # -- records (dicts, or None when absent) ---------------------------------------------
    config = _json_file(CONFIG, "The TrainConfig the run was started with (what ``resume`` re-reads).")
    meta = _json_file(METADATA, "Written once the run finishes: task, architecture, preprocessing, data, splits, "
                                "metrics.")
    calibration = _json_file(CALIBRATION, "Temperature / conformal widths fitted on validation (None: an old run, "
                                          "none fitted).")
    checkpoint_file = _file(CHECKPOINT)
    model_file = _file(MODEL, "Where a trained run's best weights go (``weights`` finds a shipped run's too).")

    @property
    def splits(self) -> dict[str, list[str]]:
        """Image ids of each split (train / val / holdout) the run was trained with."""
        return dict((self.meta or {}).get("splits") or {})

    @property
    def sites(self) -> list[str]:
        """Names of the sites fitted for this run (folders under ``sites/`` holding a site.json)."""
        root = self.path / SITES
        if not root.is_dir():
            return []
        return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "site.json").is_file())

    @property
    def finished(self) -> bool:
        return (self.path / METADATA).is_file() and weights_file(self.path) is not None

    @property
    def has_config(self) -> bool:
        return (self.path / CONFIG).is_file()

    @property
    def weights(self) -> Path | None:
        return weights_file(self.path)

    def status(self) -> dict:
        return run_status(self.path)

    # -- atomic writers --------------------------------------------------------------------
    def write_config(self, cfg: dict) -> None:
        atomic_write_json(self.path / CONFIG, cfg)

    def write_meta(self, meta: dict) -> None:
        atomic_write_json(self.path / METADATA, meta)

    def write_calibration(self, cal: dict) -> None:
        atomic_write_json(self.path / CALIBRATION, cal)

    # -- the records evaluations add (RUN/<name>.json) ---------------------------------------
    RECORDS = ("holdout", "coverage", "robustness", "heatmap")

    def record(self, name: str) -> dict | None:
        """An evaluation's record: ``holdout`` (h2a evaluate --split holdout --json), ``coverage``
        (held-out interval coverage), ``robustness``, ``heatmap`` (bench/bench_cam.py)."""
        return read_json(self.record_file(name))

    def record_file(self, name: str) -> Path:
        if name not in self.RECORDS:
            raise ValueError(f"unknown run record {name!r} (known: {', '.join(self.RECORDS)})")
        return self.path / f"{name}.json"

    def write_record(self, name: str, obj: dict) -> None:
        atomic_write_json(self.record_file(name), obj)

    def copy_records(self, dest: "Run") -> None:
        """Copy what a copy of the run needs besides its weights and metadata (which the caller
        writes): config, calibration, the evaluation records and the fitted sites."""
        dest.path.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG, CALIBRATION, *(f"{r}.json" for r in self.RECORDS)):
            if (self.path / name).is_file():
                shutil.copy2(self.path / name, dest.path / name)
        if (self.path / SITES).is_dir():
            shutil.copytree(self.path / SITES, dest.path / SITES, dirs_exist_ok=True)


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
    shipped: bool = False  # a model that comes with H2A (models/<name>/ with a model card)
    synthetic: bool = False  # trained on the synthetic demo images

    @property
    def headline(self) -> float | None:
        """The number runs are ranked by: validation MAE (lower better) or AUC."""
        value = self.metrics.get(HEADLINE.get(self.task or "boneage", HEADLINE["boneage"])[0])
        return float(value) if value is not None else None


def runs_root() -> Path:
    return get_settings().models_dir


def training_summary(meta: dict) -> dict:
    """A run's training in brief, from its metadata.json: what a warm-started run keeps of its
    source (``warm_start.source``) and what a model card lists as one stage."""
    cfg, metrics = meta.get("train_config") or {}, meta.get("metrics") or {}
    return {"name": meta.get("name"), "epochs_run": meta.get("epochs_run"), "best_epoch": meta.get("best_epoch"),
            "image_size": (meta.get("preprocess") or {}).get("size"), "lr": cfg.get("lr"),
            "train_seconds": meta.get("train_seconds"), "device": meta.get("device"),
            "val_mae": metrics.get("mae"), "val_auc": metrics.get("auc"), "warm_start": meta.get("warm_start")}


def run_status(run_dir: Path, meta: dict | None = None) -> dict:
    """progress.json plus a liveness check: a 'running' run whose process is gone is 'stopped'.
    ``meta``: the run's metadata when the caller has read it already."""
    prog = read_json(run_dir / PROGRESS)
    if prog is None:  # a shipped or copied run keeps metadata.json only: its record says how it went
        meta = meta or read_json(run_dir / METADATA)
        if meta is None:
            return {"status": "unknown"}
        history = meta.get("history") or []
        return {"status": "finished", "epoch": meta.get("epochs_run", len(history)),
                "epochs": meta.get("epochs_run", len(history)), "history": history, "device": meta.get("device", "")}
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
    prog = run_status(run_dir, meta)
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
        has_model=weights_file(run_dir) is not None and (run_dir / METADATA).exists(),
        message=prog.get("message", ""),
        shipped=is_shipped(run_dir, meta),
        synthetic=bool((meta.get("dataset") or {}).get("synthetic")),
    )


def is_shipped(run_dir: Path, meta: dict | None = None) -> bool:
    """A shipped model: committed weights (model.safetensors) and a "shipped" record."""
    meta = meta if meta is not None else (read_json(Path(run_dir) / METADATA) or {})
    return bool(meta.get("shipped")) and (Path(run_dir) / SHIPPED_WEIGHTS).is_file()


def shipped_root() -> Path | None:
    return get_settings().shipped_dir


def list_runs(root: Path | None = None, task: str | None = None) -> list[RunSummary]:
    """Every run directory under the models folder, newest first; without ``root``, the
    shipped models too (after the user's own runs)."""
    roots = [root] if root is not None else [runs_root()]
    shipped = shipped_root() if root is None else None
    out: list[RunSummary] = []
    seen: set[Path] = set()
    for folder in roots:
        if not folder.exists():
            continue
        for d in folder.iterdir():
            if d.is_dir() and ((d / CONFIG).exists() or (d / METADATA).exists()):
                seen.add(d.resolve())
                s = summarize(d)
                if task is None or s.task == task:
                    out.append(s)
    out.sort(key=lambda s: s.updated, reverse=True)
    if shipped is not None and shipped.is_dir():
        extra = [summarize(d) for d in sorted(shipped.iterdir())
                 if d.is_dir() and d.resolve() not in seen and is_shipped(d)]
        out += [s for s in extra if task is None or s.task == task]
    return out


def best_run(task: str = "boneage", root: Path | None = None) -> RunSummary | None:
    """The finished run with the best validation figure (lowest MAE / highest AUC), runs
    trained on real images (the shipped ones included) before any trained on the synthetic
    demo, whose figures say nothing about a radiograph."""
    done = [r for r in list_runs(root, task) if r.has_model and r.headline is not None]
    if not done:
        return None
    real = [r for r in done if not r.synthetic] or done
    return (min if HEADLINE[task][1] else max)(real, key=lambda r: r.headline)


def resolve_run(name_or_path: str | Path) -> Path:
    """A run given as a path or as a name inside the models folder."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    candidate = runs_root() / str(name_or_path)
    if candidate.is_dir():
        return candidate
    shipped = shipped_root()
    if shipped is not None and (shipped / str(name_or_path)).is_dir() and is_shipped(shipped / str(name_or_path)):
        return shipped / str(name_or_path)
    raise FileNotFoundError(f"no run at {p} or {candidate}")
