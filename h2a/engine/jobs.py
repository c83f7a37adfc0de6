"""Background runs: the app starts the same CLI command as a detached subprocess.

A rerun, a page switch or a closed tab never touches the process; the page reads its
progress back from the run folder (progress.json), and a restarted server finds
finished runs on disk. Several GPUs -> the command is started under torchrun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from h2a.device import gpu_count
from h2a.engine.runs import CANCEL, CONFIG, LOG, PROGRESS, atomic_write_json, read_json, run_status

JOB = "job.json"


class JobError(RuntimeError):
    """A job cannot be started (the folder is busy or already holds a finished run)."""


def build_command(run_dir: Path, gpus: int) -> list[str]:
    """`python -m h2a train --resume RUN`, under torchrun when several GPUs are present."""
    base = ["-m", "h2a", "train", "--resume", str(run_dir)]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *base]
    return [sys.executable, *base]


def start_training(cfg, gpus: int | None = None) -> Path:
    """Write the run's config.json and launch the training process detached from the app."""
    # Absolute paths in the saved config: the job runs the same from any working directory.
    cfg.out = str(Path(cfg.out).resolve())
    cfg.data = str(Path(cfg.data).resolve())
    run_dir = Path(cfg.out)
    status = run_status(run_dir).get("status") if run_dir.exists() else None
    if status in ("running", "starting", "caching"):
        raise JobError(f"{run_dir.name} is already running")
    if status == "finished":
        raise JobError(f"{run_dir.name} already holds a finished run: pick another name")
    cfg.validate()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "checkpoint.pt").exists():
        atomic_write_json(run_dir / CONFIG, asdict(cfg))
    (run_dir / CANCEL).unlink(missing_ok=True)
    gpus = gpu_count() if gpus is None else gpus
    if cfg.device == "cpu":
        gpus = 0
    cmd = build_command(run_dir, gpus)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(run_dir / LOG, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    atomic_write_json(run_dir / JOB, {"pid": proc.pid, "cmd": cmd, "started": time.time(), "gpus": gpus})
    atomic_write_json(run_dir / PROGRESS, {"status": "starting", "pid": proc.pid, "epoch": 0,
                                           "epochs": cfg.epochs, "history": [], "message": "starting…",
                                           "task": cfg.task, "arch": cfg.arch, "updated": time.time()})
    return run_dir


def request_cancel(run_dir: Path) -> None:
    """Ask the run to stop after the current batch (it saves a checkpoint first)."""
    (Path(run_dir) / CANCEL).touch()


def force_stop(run_dir: Path) -> bool:
    """SIGTERM the whole process group, for a run that ignores the cancel flag."""
    job = read_json(Path(run_dir) / JOB) or {}
    pid = job.get("pid")
    if not pid:
        return False
    try:
        os.killpg(os.getpgid(int(pid)), signal.SIGTERM)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def log_tail(run_dir: Path, lines: int = 40) -> str:
    path = Path(run_dir) / LOG
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 20000))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return "\n".join(text.splitlines()[-lines:])
