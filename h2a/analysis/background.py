"""Keyed background jobs for heavy analysis work (tensor caches, embeddings, UMAP/k-means).

Why: at full RSNA scale one embedding pass takes minutes. Run inside a page, it blocks
the page, is lost when the user leaves, and two users asking for the same thing do it
twice. A job here is like a training run (``h2a.engine.jobs``): a detached process that
survives reruns, page changes and closed tabs, and writes its progress to disk.

A job is ``(kind, params)`` on a dataset. Its **key** hashes the kind (and its version),
the dataset fingerprint, the identity of what it reads (e.g. the embedding model) and the
params, so the same question always lands in the same folder
``<workspace>/jobs/<kind>-<key>/``:

* ``spec.json``: what to compute (kind, data folder, fingerprint, identity, params);
* ``job.json``: the process the app started (PID, process group, start time);
* ``progress.json``: status, stage, done/total, items/s, ETA seconds, message;
* ``result.json`` (+ any files the kind writes): the answer, reused while the key matches;
* ``log.txt``: the process's output; ``CANCEL``: a request to stop after the current batch;
* ``.lock``: held by the one process that works on the job (``h2a.engine.lock.RunLock``).

``start_job`` is create-or-fail under the folder's lock: whoever gets the lock launches the
process and hands the lock over; everyone else (a second user, a double click) attaches to
the same job. A finished job is reused as it is; a stopped, failed or cancelled one starts
again only when asked (``restart=True``), so a page that asks on every rerun never loops on
a failure. Cancelling writes ``CANCEL``, which the worker checks at every progress report;
``force_stop`` SIGTERMs the process group only while PID, start time and group still match.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from h2a.engine.jobs import spawn_detached
from h2a.engine.lock import RunLock, RunLocked
from h2a.run import CANCEL, JobFolder, atomic_write_json, read_json, writer_alive
from h2a.processes import ProcessId, lower_priority
from h2a.settings import get_settings
from h2a.data.datasets import load_dataset

__all__ = [
    "FINAL",
    "JOB_STATES",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobKind",
    "JobSpec",
    "find_job",
    "force_stop",
    "get_kind",
    "job_dir",
    "jobs_root",
    "list_jobs",
    "register_kind",
    "request_cancel",
    "run_job",
    "start_job",
    "wait_for",
]

SPEC = "spec.json"
RESULT = "result.json"
NEEDS = "needs.json"  # the jobs this one waits for (a cancel leaves a job others wait for running)
JOB_STATES = ("missing", "starting", "running", "finished", "failed", "cancelled", "stopped")
LIVE = ("starting", "running")
FINAL = ("finished", "failed", "cancelled", "stopped")
PROGRESS_EVERY_S = 0.5  # progress.json is rewritten at most this often (plus every stage change)
RESTART_WAIT_S = 60.0  # a restart waits this long for an ending worker to let go of the lock
START_GRACE_S = 60.0  # spec.json without progress.json for longer: the start was interrupted
# Where each kind is defined: the worker process imports only the module it needs.
KIND_MODULES = {"embeddings": "h2a.analysis.cluster_jobs", "clusters": "h2a.analysis.cluster_jobs",
                "selftest": "h2a.analysis.background"}


class JobCancelled(Exception):
    """Raised inside the worker when CANCEL appears (or SIGTERM arrives): stop cleanly."""


class JobFailed(RuntimeError):
    """A job cannot run (its dataset changed, a job it needs failed, ...): one plain line."""


# ---------------------------------------------------------------- kinds

@dataclass(frozen=True)
class JobKind:
    """What a kind of job does. ``run(ctx)`` does the work in the worker process, writes any
    result files under ``ctx.dir`` and returns the JSON-able summary kept in result.json."""

    name: str
    run: Callable[[JobContext], dict]
    version: int = 1  # bump when the result's meaning changes: old results are not reused
    title: str = ""


_KINDS: dict[str, JobKind] = {}


def register_kind(kind: JobKind) -> JobKind:
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    if name not in _KINDS and name in KIND_MODULES:
        importlib.import_module(KIND_MODULES[name])
    try:
        return _KINDS[name]
    except KeyError:
        raise JobFailed(f"unknown job kind {name!r} (known: {', '.join(sorted(KIND_MODULES))})") from None


# ---------------------------------------------------------------- spec and key

@dataclass(frozen=True)
class JobSpec:
    """One question: a kind with its params, on a dataset, read through an identity.

    ``identity`` names the inputs that are not params but change the answer (the embedding
    model's identity: ``pretrained:<arch>`` or ``run:<name>:<sha1 of model.pt>``).
    ``data`` is where the worker finds the dataset; it is not in the key (the fingerprint is).
    """

    kind: str
    params: dict = field(default_factory=dict)
    data: str | None = None
    fingerprint: str | None = None
    identity: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        blob = json.dumps({"kind": self.kind, "v": get_kind(self.kind).version, "data": self.fingerprint,
                           "identity": self.identity, "params": self.params}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.key}"

    def to_dict(self) -> dict:
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, d: dict) -> JobSpec:
        return cls(kind=d["kind"], params=d.get("params") or {}, data=d.get("data"),
                   fingerprint=d.get("fingerprint"), identity=d.get("identity") or {})


def jobs_root() -> Path:
    return get_settings().jobs_dir


def job_dir(spec: JobSpec, root: Path | None = None) -> Path:
    return (Path(root) if root is not None else jobs_root()) / spec.name


# ---------------------------------------------------------------- reading a job

@dataclass
class Job:
    """A job folder as the page and the CLI see it (read-only views; nothing cached)."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def kind(self) -> str:
        return self.name.rsplit("-", 1)[0]

    @property
    def key(self) -> str:
        return self.name.rsplit("-", 1)[-1]

    def spec(self) -> JobSpec | None:
        d = read_json(self.dir / SPEC)
        return JobSpec.from_dict(d) if d else None

    def status(self) -> dict:
        """progress.json with a liveness check: 'running' whose process is gone is 'stopped'."""
        prog = JobFolder(self.dir).progress
        if prog is None:  # spec.json is written just before the process is launched
            try:
                age = time.time() - (self.dir / SPEC).stat().st_mtime
            except OSError:
                return {"status": "missing", "message": ""}
            if age < START_GRACE_S:
                return {"status": "starting", "message": "starting…"}
            return {"status": "stopped", "message": "the job was never started (the asking process died); "
                                                    "start it again"}
        if prog.get("status") in LIVE and not writer_alive(self.dir, prog):
            prog["status"] = "stopped"
            prog["message"] = ("the job's process ended without finishing (killed, or the machine restarted); "
                               "start it again")
        if prog.get("status") in LIVE:
            try:
                prog["cancel_requested_at"] = (self.dir / CANCEL).stat().st_mtime
            except OSError:
                pass
        return prog

    def result(self) -> dict | None:
        """result.json of a finished job (None otherwise)."""
        if self.status().get("status") != "finished":
            return None
        return read_json(self.dir / RESULT)

    def process(self) -> ProcessId | None:
        """The worker named by job.json, when it is still that very process."""
        proc = ProcessId.from_record(JobFolder(self.dir).job or {})
        return proc if proc is not None and proc.alive() else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = JobFolder(self.dir).log_file.read_bytes()[-20000:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def find_job(spec: JobSpec, root: Path | None = None) -> Job:
    """The job for ``spec`` (its status is 'missing' when nobody asked yet); starts nothing."""
    return Job(job_dir(spec, root))


def list_jobs(root: Path | None = None) -> list[Job]:
    """Every job folder, newest progress first."""
    base = Path(root) if root is not None else jobs_root()
    if not base.is_dir():
        return []
    jobs = [Job(p) for p in base.iterdir() if p.is_dir() and (p / SPEC).exists()]

    def _updated(job: Job) -> float:
        try:
            return JobFolder(job.dir).progress_file.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(jobs, key=_updated, reverse=True)


def resolve_job(name: str, root: Path | None = None) -> Job:
    """A job by folder name (``clusters-1a2b…``), key or unique key prefix; JobFailed otherwise."""
    base = Path(root) if root is not None else jobs_root()
    if re.fullmatch(r"[A-Za-z0-9_.-]+", name or "") is None:
        raise JobFailed(f"{name!r} is not a job name or key")
    if (base / name / SPEC).exists():
        return Job(base / name)
    hits = [j for j in list_jobs(base) if j.key.startswith(name) or j.name.startswith(name)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise JobFailed(f"no job {name!r} under {base} (see `h2a jobs list`)")
    raise JobFailed(f"{name!r} names {len(hits)} jobs: {', '.join(j.name for j in hits[:5])}; give more of the key")


# ---------------------------------------------------------------- starting

def start_job(spec: JobSpec, *, restart: bool = False, root: Path | None = None) -> Job:
    """The job for ``spec``: started in the background if needed, else the existing one.

    * running (or being started by someone else) -> that job, nothing new (dedupe);
    * finished with its result -> that job (result reuse);
    * failed / cancelled / stopped -> that job as it is, unless ``restart``;
    * never asked -> a new detached process.
    """
    get_kind(spec.kind)  # an unknown kind fails here, in the caller, not in a log file
    path = job_dir(spec, root)
    lock = _acquire(path, wait_s=RESTART_WAIT_S if restart else 0.0)
    if lock is None:
        return Job(path)  # its worker (or another session starting it) holds the lock: watch it
    with lock:
        job = Job(path)
        # under the lock no local worker runs: no progress.json = an interrupted start
        status = job.status().get("status") if JobFolder(path).progress_file.exists() else "missing"
        if status == "finished" and (path / RESULT).exists():
            return job
        if status in LIVE:  # a writer on another host (this one holds no lock): watch it
            return job
        if status in FINAL and not restart:
            return job
        _clear(path)
        atomic_write_json(path / SPEC, spec.to_dict())
        _spawn(path, lock)
    return Job(path)


def _acquire(path: Path, wait_s: float) -> RunLock | None:
    """The folder's lock, or None while a live worker holds it. A worker that has just
    written its final status still holds it until it exits: a restart waits that long."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return RunLock(path).acquire()
        except RunLocked:
            if time.monotonic() >= deadline or Job(path).status().get("status") not in FINAL:
                return None
            time.sleep(0.1)


def _clear(path: Path) -> None:
    """Remove a previous attempt's progress, result files and cancel flag (keeps the log)."""
    for entry in path.iterdir():
        if entry.name in (".lock", JobFolder(path).log_file.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def worker_command(path: Path) -> list[str]:
    """`python -m h2a jobs run JOB_DIR`: the same entry point a user can run by hand."""
    return [sys.executable, "-m", "h2a", "jobs", "run", str(path)]


def _spawn(path: Path, lock: RunLock) -> None:
    """Launch the worker detached (own session), write job.json/progress.json, hand the lock over.

    The pattern of ``h2a.engine.jobs._spawn``: the child adopts the inherited lock only
    once it is named the holder, so nothing else can start the job in between."""
    cmd = worker_command(path)
    try:
        ident = spawn_detached(cmd, JobFolder(path).log_file, lock)
    except OSError as exc:  # no process: say so instead of 'starting' forever
        JobFolder(path).write_progress({"status": "failed", "message": f"could not start: {one_line(exc)}",
                                     "updated": time.time()})
        return
    now = time.time()
    JobFolder(path).write_job({**ident.record(), "cmd": cmd, "started": now})
    JobFolder(path).write_progress({"status": "starting", **ident.record(), "stage": "starting", "done": 0,
                                    "total": 0, "message": "starting…", "started": now, "updated": now})
    lock.hand_over(ident.pid)


# ---------------------------------------------------------------- cancelling

def request_cancel(job: Job) -> bool:
    """Ask a live job to stop at its next progress report. False when none runs (a flag left
    for a dead job would cancel its next start)."""
    if job.status().get("status") not in LIVE:
        return False
    (job.dir / CANCEL).touch()
    return True


def force_stop(job: Job) -> bool:
    """SIGTERM the job's process group, for a job stuck in a step that reports no progress.

    Only while job.json's PID still has its recorded start time and process group: after a
    crash the PID may belong to an unrelated process."""
    proc = ProcessId.from_record(JobFolder(job.dir).job or {})
    return proc is not None and proc.terminate_group()


def cancel(job: Job, wait_s: float = 10.0, poll_s: float = 0.2) -> str:
    """Request a cancel, wait up to ``wait_s`` for the job to stop, then force-stop it.

    Returns what happened: 'not running', 'cancelled', 'terminated' or 'still running'."""
    if not request_cancel(job):
        return "not running"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if job.status().get("status") not in LIVE:
            return "cancelled"
        time.sleep(poll_s)
    if force_stop(job):
        return "terminated"
    return "cancelled" if job.status().get("status") not in LIVE else "still running"


# ---------------------------------------------------------------- the worker side

class JobContext:
    """Handed to a kind's ``run``: the spec, the folder, and a progress function that also
    checks for a cancel request (so every core loop that reports progress is cancellable)."""

    def __init__(self, path: Path, spec: JobSpec) -> None:
        self.dir = path
        self.spec = spec
        self.params = spec.params
        self.stage = "working"
        self._stage_key: tuple = ()
        self._stage_t0 = time.monotonic()
        self._last_write = 0.0
        self._started = time.time()
        self._ident = ProcessId.of(os.getpid(), pgid=os.getpgid(0)).record()
        self.timings: dict[str, float] = {}

    # -- cancel ----------------------------------------------------------------
    def cancelled(self) -> bool:
        return (self.dir / CANCEL).exists()

    def check_cancel(self) -> None:
        if self.cancelled():
            raise JobCancelled("cancelled on request")

    # -- progress --------------------------------------------------------------
    def set_stage(self, stage: str) -> None:
        """A new stage: its own counter, rate and ETA; the time of the last one is kept."""
        now = time.monotonic()
        if self._stage_key:
            self.timings[self._stage_key[0]] = round(self.timings.get(self._stage_key[0], 0.0)
                                                     + now - self._stage_t0, 3)
        self.stage, self._stage_key, self._stage_t0 = stage, (stage,), now
        self.write("running", 0, 0, "", force=True)

    def progress(self, done: int, total: int, message: str = "") -> None:
        """A ``ProgressFn`` for core functions: writes progress.json (throttled) and checks CANCEL."""
        self.check_cancel()
        self.write("running", done, total, message, force=done >= total)

    def steps(self, done: int, total: int, message: str = "") -> None:
        """A ``ProgressFn`` for coarse, uneven steps (PCA, UMAP, k-means): progress without a
        rate or an ETA, which such steps would only mislead."""
        self.check_cancel()
        self.write("running", done, total, message, force=True, rate=None, eta_s=None)

    def write(self, status: str, done: int, total: int, message: str, *, force: bool = False,
              **extra: Any) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        elapsed = now - self._stage_t0
        rate = done / elapsed if done and elapsed > 0 else None
        eta = (total - done) / rate if rate and total and done < total else (0.0 if total and done >= total else None)
        JobFolder(self.dir).write_progress({
            "status": status, **self._ident, "kind": self.spec.kind, "stage": self.stage, "done": int(done),
            "total": int(total), "rate": None if rate is None else round(rate, 2),
            "eta_s": None if eta is None else round(eta, 1), "message": message, "started": self._started,
            "elapsed_s": round(time.time() - self._started, 1), "updated": time.time(), "timings": self.timings,
            **extra})

    # -- inputs ------------------------------------------------------------------
    def dataset(self):
        """The spec's dataset, checked against its fingerprint (a changed folder is a new question)."""
        ds = load_dataset(self.spec.data)
        if self.spec.fingerprint and ds.fingerprint != self.spec.fingerprint:
            raise JobFailed(f"{ds.name}: the dataset changed since this job was asked for "
                            "(labels or image files differ); ask again")
        return ds


def wait_for(ctx: JobContext, spec: JobSpec, label: str, poll_s: float = 0.5) -> dict:
    """Inside a worker: start (or attach to) the job ``spec`` needs and wait for it,
    mirroring its progress as stage '<label>: <its stage>'. Returns its result.

    A cancel request stops the wait; the needed job is cancelled too unless another
    live job also waits for it. A failed or stopped needed job fails this one."""
    needed = start_job(spec, restart=True)
    atomic_write_json(ctx.dir / NEEDS, {"jobs": [needed.name]})
    ctx.set_stage(label)  # the wait is timed as one stage; the stage shown names the other job's
    while True:
        st = needed.status()
        state = st.get("status")
        if state == "finished":
            return needed.result() or {}
        if state in ("failed", "cancelled", "stopped"):
            raise JobFailed(f"{label} job {needed.name} {state}: {st.get('message') or 'no message'}")
        if ctx.cancelled():
            if not _other_waiters(needed, ctx.dir):
                request_cancel(needed)
            raise JobCancelled("cancelled on request")
        ctx.stage = f"{label}: {st.get('stage', 'starting')}"
        ctx.write("running", int(st.get("done") or 0), int(st.get("total") or 0), st.get("message") or "",
                  force=True, rate=st.get("rate"), eta_s=st.get("eta_s"), waiting_for=needed.name)
        time.sleep(poll_s)


def _other_waiters(needed: Job, me: Path) -> bool:
    """Whether another live job is waiting for ``needed`` (then a cancel leaves it running)."""
    for job in list_jobs(me.parent):
        if job.dir == me:
            continue
        if needed.name in ((read_json(job.dir / NEEDS) or {}).get("jobs") or []) \
                and job.status().get("status") in LIVE:
            return True
    return False


def _on_sigterm(signum, frame) -> None:
    raise JobCancelled("stopped by SIGTERM")


def run_job(path: Path) -> int:
    """The worker: run the job in ``path`` under its lock; always leave a final status.

    Exit code 0 finished, 1 failed, 130 cancelled, 2 the folder is busy or holds no spec."""
    path = Path(path).resolve()
    spec_d = read_json(path / SPEC)
    if not spec_d:
        print(f"{path}: no {SPEC}", file=sys.stderr)
        return 2
    try:
        lock = RunLock(path).acquire()  # adopts the app's lock, or takes a free one (a run by hand)
    except RunLocked as exc:
        print(str(exc), file=sys.stderr)
        return 2
    with lock:
        lower_priority()  # the pages users are looking at come first
        signal.signal(signal.SIGTERM, _on_sigterm)
        spec = JobSpec.from_dict(spec_d)
        ctx = JobContext(path, spec)
        ctx.write("running", 0, 0, "started", force=True)
        t0 = time.monotonic()
        try:
            ctx.check_cancel()
            result = get_kind(spec.kind).run(ctx)
            ctx.set_stage("done")
            seconds = round(time.monotonic() - t0, 3)
            atomic_write_json(path / RESULT, {**(result or {}), "seconds": seconds, "timings": ctx.timings})
            ctx.write("finished", 1, 1, f"finished in {seconds:.1f} s", force=True)
            return 0
        except (JobCancelled, KeyboardInterrupt) as exc:
            ctx.write("cancelled", 0, 0, str(exc) or "cancelled", force=True)
            return 130
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, named in one line
            traceback.print_exc()
            ctx.write("failed", 0, 0, one_line(exc), force=True)
            return 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            (path / CANCEL).unlink(missing_ok=True)


def one_line(exc: BaseException) -> str:
    """'ExcType: first line of the message' (at most 300 characters)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    line = f"{name}: {text}" if text and name not in ("JobFailed", "CacheError", "DatasetError") else (text or name)
    return line[:300]


# ---------------------------------------------------------------- a kind that only exercises the machinery

def _selftest(ctx: JobContext) -> dict:
    """Counts ``steps`` steps of ``step_s`` seconds, reporting each: for `h2a jobs` smoke checks
    and tests of dedupe, cancel and restart without loading a model."""
    steps, step_s = int(ctx.params.get("steps", 5)), float(ctx.params.get("step_s", 0.2))
    ctx.set_stage("counting")
    for i in range(steps):
        time.sleep(step_s)
        ctx.progress(i + 1, steps, f"step {i + 1}")
    if ctx.params.get("fail"):
        raise JobFailed(str(ctx.params["fail"]))
    return {"steps": steps, "pid": os.getpid()}


register_kind(JobKind("selftest", _selftest, title="self-test (counts steps)"))


def iter_live(root: Path | None = None) -> Iterator[Job]:
    """Live jobs (starting or running), for a server's overview."""
    for job in list_jobs(root):
        if job.status().get("status") in LIVE:
            yield job
