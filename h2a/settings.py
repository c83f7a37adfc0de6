"""Settings from environment variables: the one place that reads ``os.environ``.

Read on every call (cheap) so tests and the app can point H2A at another workspace
without reloading modules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    data_dir: Path | None
    workspace: Path
    models_dir: Path
    device: str  # "auto", "cpu", "cuda" or "cuda:N"
    demo_n: int
    demo_seed: int
    workers: int
    data_roots: tuple[Path, ...] = ()  # folders the app may open datasets under (h2a.server.check_data_path)
    password_hash: str | None = None  # h2a.server.hash_password's line; None = no password asked
    predict_slots: int = 1  # heavy predictions run at once per server process (bounds peak memory)
    shipped_dir: Path | None = None  # the shipped models (models/ of the repo); None = none offered

    @property
    def demo_dir(self) -> Path:
        return self.workspace / "demo"

    @property
    def cache_dir(self) -> Path:
        return self.workspace / "cache"

    @property
    def configs_dir(self) -> Path:
        return self.workspace / "preprocess-configs"

    @property
    def header_db(self) -> Path:
        return self.cache_dir / "headers.sqlite"

    @property
    def jobs_dir(self) -> Path:
        return self.workspace / "jobs"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{(self.workspace / 'mlflow.db').resolve()}"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def get_settings() -> Settings:
    """Current settings. Defaults keep everything inside the repo's ignored folders."""
    ws_env = os.environ.get("H2A_WORKSPACE", "").strip()
    workspace = Path(ws_env).expanduser() if ws_env else REPO_ROOT / "workspace"
    models_env = os.environ.get("H2A_MODELS_DIR", "").strip()
    if models_env:
        models_dir = Path(models_env).expanduser()
    elif ws_env:
        models_dir = workspace / "models"
    else:
        models_dir = REPO_ROOT / "models"
    data_env = os.environ.get("H2A_DATA_DIR", "").strip()
    data_dir = Path(data_env).expanduser() if data_env else None
    return Settings(
        data_dir=data_dir,
        workspace=workspace,
        models_dir=models_dir,
        device=os.environ.get("H2A_DEVICE", "auto").strip() or "auto",
        demo_n=_int_env("H2A_DEMO_N", 2000),
        demo_seed=_int_env("H2A_DEMO_SEED", 0),
        workers=_int_env("H2A_WORKERS", max(1, min(8, usable_cpus()))),
        data_roots=_data_roots(workspace, data_dir),
        password_hash=os.environ.get("H2A_PASSWORD_HASH", "").strip() or None,
        predict_slots=max(1, _int_env("H2A_PREDICT_SLOTS", 1)),
        shipped_dir=_shipped_dir(),
    )


def _shipped_dir() -> Path | None:
    """``H2A_SHIPPED_DIR`` ('off' = none), else the repository's ``models/``, where the
    shipped runs are committed (a user's own runs sit beside them, git-ignored)."""
    raw = os.environ.get("H2A_SHIPPED_DIR", "").strip()
    if raw.lower() == "off":
        return None
    return Path(raw).expanduser() if raw else REPO_ROOT / "models"


def _data_roots(workspace: Path, data_dir: Path | None) -> tuple[Path, ...]:
    """``H2A_DATA_ROOTS`` (os.pathsep-separated) or, unset, the workspace and ``H2A_DATA_DIR``:
    the app's folder picker opens nothing outside them (the server is shared)."""
    raw = os.environ.get("H2A_DATA_ROOTS", "")
    if raw.strip():
        return tuple(Path(p.strip()).expanduser() for p in raw.split(os.pathsep) if p.strip())
    return (workspace,) + ((data_dir,) if data_dir is not None else ())


def data_file_roots(settings: Settings | None = None) -> tuple[Path, ...]:
    """Where a served dataset's files (label CSVs, images) may resolve to: the shared
    roots plus the two folders the admin named (the workspace, with the demo, and
    ``H2A_DATA_DIR``)."""
    s = settings or get_settings()
    extra = (s.workspace,) + ((s.data_dir,) if s.data_dir is not None else ())
    return tuple(dict.fromkeys(s.data_roots + extra))


def enforced_data_roots() -> tuple[Path, ...] | None:
    """``data_file_roots`` when ``H2A_DATA_ROOTS`` is set, else None (plain CLI use: a
    scan reads what the folder links to). ``h2a serve`` exports ``H2A_DATA_ROOTS``, so
    the server and every job it starts keep to the same roots."""
    if not os.environ.get("H2A_DATA_ROOTS", "").strip():
        return None
    return data_file_roots()


@dataclass(frozen=True)
class DistEnv:
    """What torchrun tells a process about its place in a multi-process run."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """torchrun's RANK / LOCAL_RANK / WORLD_SIZE (a plain run is rank 0 of 1)."""
    return DistEnv(
        rank=_int_env("RANK", 0),
        local_rank=_int_env("LOCAL_RANK", 0),
        world_size=_int_env("WORLD_SIZE", 1),
    )


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's limit), not the host's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
