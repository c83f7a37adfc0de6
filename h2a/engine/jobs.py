"""Background runs: the app starts the same CLI command as a detached subprocess.

A rerun, a page switch or a closed tab never touches the process; the page reads its
progress back from the run folder (progress.json), and a restarted server finds
finished runs on disk. Several GPUs -> the command is started under torchrun.

A start is create-or-fail under the run's lock (``h2a.engine.lock``), which the job
inherits; job.json names the job by PID, process group and start time, and stop/cancel
act only while all of them still match.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from h2a.device import gpu_count
from h2a.engine.config import TrainConfig
from h2a.engine.lock import RunLock, RunLocked, describe_holder
from h2a.run import CANCEL, Run, run_status, writer_alive
from h2a.processes import ProcessId


class JobError(RuntimeError):
    """A job cannot be started (the folder is busy or already holds a finished run)."""


class RunExists(JobError):
    """The name belongs to a stopped run: resume it (its own settings) or choose another name."""

    def __init__(self, run_dir: Path, saved: dict, status: str) -> None:
        self.run_dir, self.saved, self.status = run_dir, saved, status
        super().__init__(f"{run_dir.name} already holds a {status} run: resume it with its own settings, "
                         "or choose another name")


def build_command(run_dir: Path, gpus: int) -> list[str]:
    """`python -m h2a train --resume RUN`, under torchrun when several GPUs are present."""
    base = ["-m", "h2a", "train", "--resume", str(run_dir)]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *base]
    return [sys.executable, *base]


def start_training(cfg: TrainConfig, gpus: int | None = None) -> Path:
    """Start a new run in the background; its folder must not hold a run yet.

    Create-or-fail: the folder's lock is taken before anything is checked and handed to
    the job, so of two starts (a double click, two users) exactly one launches a process.
    A folder with a stopped run raises ``RunExists`` (see ``resume_training``): the form's
    settings are never silently dropped for the saved ones.
    """
    # Absolute paths in the saved config: the job runs the same from any working directory.
    cfg.out = str(Path(cfg.out).resolve())
    cfg.data = str(Path(cfg.data).resolve())
    cfg.validate()
    return _launch(Path(cfg.out), cfg, gpus)


def resume_training(run_dir: Path, gpus: int | None = None) -> Path:
    """Start a stopped run again in the background, with the settings in its config.json."""
    return _launch(Path(run_dir).resolve(), None, gpus)


def saved_config(run_dir: Path) -> dict | None:
    """The settings a run was started with (its config.json), or None when it has none."""
    return Run.at(run_dir).config


def _launch(run_dir: Path, cfg: TrainConfig | None, gpus: int | None) -> Path:
    """Under the run's lock: check the folder, write config.json (new runs), start the job."""
    try:
        lock = RunLock(run_dir).acquire()
    except RunLocked as exc:
        raise JobError(f"{run_dir.name} is already running ({describe_holder(exc.holder)})") from exc
    with lock:
        status = run_status(run_dir).get("status")
        saved = saved_config(run_dir)
        if status == "finished":
            raise JobError(f"{run_dir.name} already holds a finished run: pick another name")
        if status in ("running", "starting", "caching"):  # a writer this machine cannot see (another host)
            raise JobError(f"{run_dir.name} is already running")
        if cfg is not None and saved is not None:
            raise RunExists(run_dir, saved, status or "stopped")
        if cfg is None:
            if saved is None:
                raise JobError(f"{run_dir.name} has no config.json to resume from")
            cfg = TrainConfig.from_dict({**saved, "out": str(run_dir)})
        else:
            Run.at(run_dir).write_config(asdict(cfg))
        (run_dir / CANCEL).unlink(missing_ok=True)
        gpus = gpu_count() if gpus is None else gpus
        if cfg.device == "cpu":
            gpus = 0
        return _spawn(run_dir, cfg, build_command(run_dir, gpus), gpus, lock)


def spawn_detached(cmd: list[str], log_path: Path, lock: RunLock) -> ProcessId:
    """Start ``cmd`` in its own session (a rerun, a closed tab or the server's exit never
    reaches it) holding the inherited lock, its output appended to ``log_path``.

    The child adopts the lock only once named the holder: the caller writes its job.json /
    progress.json first, then calls ``lock.hand_over(pid)``, so the job's own first write
    cannot be overwritten by 'starting'. Shared by training runs, analysis jobs and studies.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", **lock.token())
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, pass_fds=(lock.fd,))
    return ProcessId.of(proc.pid, pgid=proc.pid)  # a new session: its process group is its PID


def _spawn(run_dir: Path, cfg: TrainConfig, cmd: list[str], gpus: int, lock: RunLock) -> Path:
    """Launch the training command detached and record it (see ``spawn_detached``)."""
    run = Run.at(run_dir)
    job = spawn_detached(cmd, run.log_file, lock)
    history = (run.progress or {}).get("history", [])  # a resumed run keeps its curves
    run.write_job({**job.record(), "cmd": cmd, "started": time.time(), "gpus": gpus})
    run.write_progress({"status": "starting", **job.record(), "epoch": 0, "epochs": cfg.epochs, "history": history,
                        "message": "starting…", "task": cfg.task, "arch": cfg.arch, "updated": time.time()})
    lock.hand_over(job.pid)
    return run_dir


def request_cancel(run_dir: Path) -> bool:
    """Ask the run to stop after the current batch (it saves a checkpoint first).

    Only while its writer still runs (checked by PID and start time): a flag left for a
    dead run would cancel whatever is started in the folder next. False when none runs.
    """
    if not writer_alive(Path(run_dir)):
        return False
    (Path(run_dir) / CANCEL).touch()
    return True


def job_process(run_dir: Path) -> ProcessId | None:
    """The app's job for this run, when job.json names one that is still the same process."""
    proc = ProcessId.from_record(Run.at(run_dir).job or {})
    return proc if proc is not None and proc.verified() else None


def force_stop(run_dir: Path) -> bool:
    """SIGTERM the job's process group, for a run that ignores the cancel flag.

    Acts only when the PID still has the start time and the process group job.json
    recorded: after a crash the PID may belong to an unrelated process by now.
    """
    proc = job_process(run_dir)
    return proc is not None and proc.terminate_group()


def log_tail(run_dir: Path, lines: int = 40) -> str:
    path = Run.at(run_dir).log_file
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
