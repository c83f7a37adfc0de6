"""One writer per run, and training failures that leave a readable, resumable run.

Fault tests (issue 17): two writers into one folder, concurrent starts from the CLI and
the app, stale PIDs after a crash, a moved run resumed, a full disk, corrupt checkpoints,
and ``kill -9`` at random points. Every run is a tiny_cnn at 48 px on the demo data.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from h2a.data.preprocess import PreprocessConfig
from h2a.engine.config import TrainConfig, TrainingError
from h2a.run import read_json, run_status
from h2a.engine.trainer import train
from h2a.processes import pid_alive
from tests.conftest import REPO, run_cli

SMALL = PreprocessConfig(size=48).to_dict()
FINAL = ("finished", "failed", "cancelled", "diverged", "stopped")


def _cfg(demo_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(demo_dir), out=str(out), arch="tiny_cnn", pretrained=False, preprocess=SMALL,
                epochs=2, batch_size=32, lr=3e-3, workers=0, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _train_cmd(demo_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "h2a", "train", "--data", str(demo_dir), "--out", str(out), "--arch", "tiny_cnn",
            "--no-pretrained", "--image-size", "48", "--workers", "0", "--device", "cpu", *extra]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1")


def _wait_for(pred, timeout: float = 600, what: str = "") -> None:
    """Poll until ``pred()`` (a generous bound for a loaded 2-core box, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _status(out: Path) -> str | None:
    return (read_json(out / "progress.json") or {}).get("status")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _killed_run(demo_dir: Path, out: Path) -> Path:
    """A run as a kill -9 after its first epoch leaves it: checkpoint at epoch 1 of 2,
    progress.json still 'running' for a process that is gone, no metadata.json."""
    train(_cfg(demo_dir, out, epochs=1), log=lambda m: None)
    cfg = json.loads((out / "config.json").read_text())
    cfg["epochs"] = 2
    (out / "config.json").write_text(json.dumps(cfg))
    prog = json.loads((out / "progress.json").read_text())
    prog.update(status="running", pid=_dead_pid(), message="")
    (out / "progress.json").write_text(json.dumps(prog))
    (out / "metadata.json").unlink()
    return out


def _temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".*") if p.name != ".lock")


def _start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat (read here, not with the code under test)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _lock_is_free(run_dir: Path) -> bool:
    from h2a.engine.lock import RunLock, RunLocked

    try:
        RunLock(run_dir).acquire().release()
    except RunLocked:
        return False
    return True


# ---------------------------------------------------------------- one writer per run

def test_a_second_cli_writer_is_refused_naming_the_holder(demo_dir: Path, workspace: Path) -> None:
    """Two `train --out same`: both used to exit 0, the second reporting the first's model."""
    out = workspace / "models" / "two-writers"
    first = subprocess.Popen(_train_cmd(demo_dir, out, "--epochs", "50", "--batch-size", "8"), cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _status(out) == "running" or first.poll() is not None, what="the first run to start")
        assert first.poll() is None, first.communicate()
        second = subprocess.run(_train_cmd(demo_dir, out, "--epochs", "1"), cwd=REPO, env=_env(),
                                capture_output=True, text=True, timeout=600, check=False)
        assert second.returncode == 2, second.stdout[-1000:] + second.stderr[-2000:]
        assert "in use by another training" in second.stderr and f"pid {first.pid} on host " in second.stderr
        assert " since 20" in second.stderr and "Traceback" not in second.stderr
        assert _status(out) == "running"  # the refused writer touched nothing of the first's
    finally:
        (out / "CANCEL").touch()
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert _status(out) == "cancelled"
    assert (read_json(out / "config.json") or {})["epochs"] == 50  # the first run's own settings


def test_concurrent_cli_starts_exactly_one_trains(demo_dir: Path, workspace: Path) -> None:
    out = workspace / "models" / "racing"
    procs = [subprocess.Popen(_train_cmd(demo_dir, out, "--epochs", "2"), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], [r[2][-1500:] for r in results]
    loser = next(r for r in results if r[0] == 2)
    # refused while the winner held the folder, or (if it started late) because the run was done
    assert "in use by another training" in loser[2] or "already holds a finished run" in loser[2], loser[2]
    assert "Traceback" not in loser[2]
    meta = read_json(out / "metadata.json")
    assert [h["epoch"] for h in meta["history"]] == [1, 2] and _status(out) == "finished"


def test_concurrent_page_starts_launch_one_process(demo_dir: Path, workspace: Path) -> None:
    """A double click or two users: one job, and it is the one job.json tracks."""
    from h2a.engine.jobs import JobError, force_stop, job_process, start_training
    from h2a.engine.lock import read_holder

    out = workspace / "models" / "double-click"
    gate = threading.Barrier(4)
    started: list[Path] = []
    refused: list[str] = []

    def click() -> None:
        gate.wait()
        try:
            started.append(start_training(_cfg(demo_dir, out, epochs=3), gpus=0))
        except JobError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=click) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = read_json(out / "job.json")
    try:
        assert len(started) == 1 and len(refused) == 3, (started, refused)
        assert all("already running" in r for r in refused)
        proc = job_process(out)
        assert proc is not None and proc.pid == job["pid"] == job["pgid"] and job["pid_start"] > 0
        _wait_for(lambda: read_holder(out).get("job_pid") == job["pid"], 60, "the hand-over")
        assert not _lock_is_free(out)  # the job holds the lock the page took for it
    finally:
        assert force_stop(out)
    _wait_for(lambda: not pid_alive(job["pid"]), 120, "the stopped job to exit")
    assert _lock_is_free(out)  # released by the kernel when the job died
    assert run_status(out)["status"] == "stopped"


def test_stop_and_cancel_never_signal_a_stale_pid(workspace: Path) -> None:
    """After a crash the PID in job.json may belong to someone else: it must not be signalled."""
    from h2a.engine.jobs import force_stop, request_cancel

    out = workspace / "models" / "stale-pid"
    out.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        real = _start_ticks(bystander.pid)
        (out / "job.json").write_text(json.dumps({"pid": bystander.pid}))  # the old record: PID only
        (out / "progress.json").write_text(json.dumps({"status": "running", "pid": bystander.pid}))
        assert not force_stop(out)
        (out / "job.json").write_text(json.dumps({"pid": bystander.pid, "pgid": bystander.pid,
                                                  "pid_start": real + 1}))  # same PID, another process
        (out / "progress.json").write_text(json.dumps({"status": "running", "pid": bystander.pid,
                                                       "pid_start": real + 1}))
        assert not force_stop(out)
        assert run_status(out)["status"] == "stopped"  # a reused PID does not keep a dead run running
        assert not request_cancel(out) and not (out / "CANCEL").exists()
        assert bystander.poll() is None  # never signalled
        (out / "job.json").write_text(json.dumps({"pid": bystander.pid, "pgid": bystander.pid + 1,
                                                  "pid_start": real}))  # the group no longer matches
        assert not force_stop(out) and bystander.poll() is None
        (out / "job.json").write_text(json.dumps({"pid": bystander.pid, "pgid": bystander.pid, "pid_start": real}))
        assert run_status(out)["status"] == "running"
        assert force_stop(out)  # both still match: this is our job
        assert bystander.wait(timeout=30) == -signal.SIGTERM
    finally:
        if bystander.poll() is None:
            bystander.kill()
            bystander.wait()


def test_resume_of_a_moved_run_writes_where_it_was_pointed(demo_dir: Path, workspace: Path) -> None:
    original = _killed_run(demo_dir, workspace / "models" / "moved-from")
    copy = workspace / "models" / "moved-to"
    shutil.copytree(original, copy)
    before = (original / "checkpoint.pt").read_bytes()
    done = run_cli("train", "--resume", str(copy), env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (original / "checkpoint.pt").read_bytes() == before  # the old folder is untouched
    assert not (original / "metadata.json").exists() and _status(original) == "running"
    meta = read_json(copy / "metadata.json")
    assert meta["name"] == "moved-to" and [h["epoch"] for h in meta["history"]] == [1, 2]
    assert int(torch.load(copy / "checkpoint.pt", weights_only=True)["epoch"]) == 2
    assert read_json(copy / "config.json")["out"] == str(copy.resolve())


# ---------------------------------------------------------------- failures named, state kept

def test_disk_full_at_a_checkpoint_keeps_the_last_good_one(demo_dir: Path, workspace: Path, monkeypatch) -> None:
    out = workspace / "models" / "disk-full"
    real_save = torch.save

    def save(obj, f, *a, **kw):
        if isinstance(obj, dict) and "optimizer" in obj and obj.get("epoch") == 2:
            real_save(obj, f, *a, **kw)  # half written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(TrainingError, match="disk full while writing checkpoint.pt"):
        train(_cfg(demo_dir, out, epochs=3), log=lambda m: None)
    prog = read_json(out / "progress.json")
    assert prog["status"] == "failed" and "disk full" in prog["message"]
    assert "last good checkpoint.pt is kept" in prog["message"]
    assert int(torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]) == 1
    assert _temp_files(out) == []  # no half-written checkpoint left behind
    assert run_status(out)["status"] == "failed"


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_ends_the_run_as_failed_with_disk_full(demo_dir: Path, workspace: Path) -> None:
    """RLIMIT_FSIZE as a full disk: small files fit, a model does not. The status used to
    stay 'running' with the real error masked."""
    from h2a.data.cache import build_cache
    from h2a.data.datasets import load_dataset

    build_cache(load_dataset(demo_dir), PreprocessConfig.from_dict(SMALL))  # the cache is not what fills up
    out = workspace / "models" / "fsize"
    proc = subprocess.run(_train_cmd(demo_dir, out, "--epochs", "2"), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600, check=False, preexec_fn=_limit_file_size(100_000))
    assert proc.returncode == 2, proc.stderr[-2000:]
    # the last word is one line (MLflow may log its own store's failure above it: tracking is optional)
    assert proc.stderr.strip().splitlines()[-1].startswith("h2a train: error: disk full while writing model.pt")
    prog = json.loads((out / "progress.json").read_text())
    assert prog["status"] == "failed" and "disk full" in prog["message"]
    assert _temp_files(out) == []
    assert not (out / "checkpoint.pt").exists() or torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_checkpoint_is_named_not_a_traceback(demo_dir: Path, workspace: Path, damage: str) -> None:
    out = _killed_run(demo_dir, workspace / "models" / f"corrupt-{damage}")
    ckpt = out / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    if damage == "truncated":
        proc = run_cli("train", "--resume", str(out), env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"{ckpt} is truncated or corrupt" in proc.stderr
    else:
        with pytest.raises(TrainingError, match=f"{ckpt} is truncated or corrupt"):
            train(_cfg(demo_dir, out), log=lambda m: None)
    prog = read_json(out / "progress.json")
    assert prog["status"] == "failed" and str(ckpt) in prog["message"]  # the page shows why
    assert ckpt.read_bytes() != data and _lock_is_free(out)


def test_kill_9_at_random_points_leaves_a_resumable_run(demo_dir: Path, workspace: Path) -> None:
    """Killed while caching, then twice at random moments of training; then resumed to the end."""
    out = workspace / "models" / "kill9"
    rng = random.Random(17)
    fresh = PreprocessConfig(size=40).to_dict()  # a cache of its own, so the first kill lands while caching
    cmd = _train_cmd(demo_dir, out, "--epochs", "40", "--batch-size", "16", "--image-size", "40")
    for round_ in range(3):
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wanted = "caching" if round_ == 0 else "running"
            _wait_for(lambda p=proc, w=wanted: _status(out) == w or p.poll() is not None, what=wanted)
            if round_:
                time.sleep(rng.uniform(0.0, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
        prog = json.loads((out / "progress.json").read_text())  # whole, never half written
        assert prog["status"] in ("caching", "running")
        assert run_status(out)["status"] == "stopped", (round_, prog["status"])
        if (out / "checkpoint.pt").exists():
            from h2a.engine.state import load_checkpoint

            assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1
        assert _lock_is_free(out)  # the kernel released it with the process
    saved = json.loads((out / "config.json").read_text())
    assert saved["preprocess"]["size"] == fresh["size"]
    at_kill = int(torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]) if (out / "checkpoint.pt").exists() else 0
    saved["epochs"] = at_kill + 2  # shorten the rest of the run for the test
    (out / "config.json").write_text(json.dumps(saved))
    done = run_cli("train", "--resume", str(out), env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    meta = read_json(out / "metadata.json")
    assert [h["epoch"] for h in meta["history"]] == list(range(1, at_kill + 3))  # none lost or repeated
    assert _status(out) == "finished" and _temp_files(out) == []
