"""Tensor cache: decode and preprocess a dataset once into a memory-mapped uint8 array.

Decoding a 2000 px PNG and resizing it costs tens of milliseconds; reading 64 KiB from a
memmap costs microseconds. So training and embedding read prepared images from here,
keyed by (dataset fingerprint, ``PreprocessConfig.cache_key()``): augmentation and
normalisation changes reuse the cache, a changed file or geometry/contrast builds anew.

Layout of one cache directory::

    images.u8    raw uint8, N x size x size, rows aligned with index.json "ids"
    index.json   ids, ok mask, errors, config, fingerprint, created (written last)

A build writes into a hidden temp directory and renames it into place, so a killed build
never leaves something that looks complete.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from h2a.settings import get_settings
from h2a.data.preprocess import PreprocessConfig
from h2a.data.pool import WorkerError, run_tasks, worker_code
from h2a.processes import pid_alive
from h2a.progress import ProgressFn, report

CACHE_FORMAT = 1
IMAGES_FILE = "images.u8"
INDEX_FILE = "index.json"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


class CacheError(RuntimeError):
    """A cache cannot be built (no disk space, a worker died); the message says why."""


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _disk_full(where: Path, what: str) -> CacheError:
    return CacheError(
        f"The disk is full: {what} in {where} could not be written. Free some space, "
        "choose a smaller image size, or set H2A_WORKSPACE elsewhere.")


def _reserve(path: Path, nbytes: int) -> None:
    """Create ``path`` with ``nbytes`` of zeros whose blocks are really allocated.

    WHY: a sparse file is only promised space; when the disk fills during the build,
    a worker writing through its memmap dies of SIGBUS ("exit code -7"). Reserving the
    blocks first turns that into an ENOSPC here, before any work is done. Filesystems
    without fallocate fall back to a sparse file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if nbytes:
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.ftruncate(fd, nbytes)
            except AttributeError:  # pragma: no cover - no posix_fallocate (macOS)
                os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


@dataclass
class TensorCache:
    """An opened cache. ``images`` is a read-only memmap; rows align with ``ids``."""

    path: Path
    ids: list[str]
    images: np.ndarray  # np.memmap (N, size, size) uint8; a plain empty array when N == 0
    ok: np.ndarray
    errors: dict[str, str]
    config: PreprocessConfig  # the caller's config (same cache_key as the one that built it)
    fingerprint: str
    built_now: bool = False  # True only when this call decoded the images (tests assert reuse)
    # the rest of index.json: created, build_seconds, workers, input_bytes and the build's
    # throughput (images_per_s, mb_per_s), kept so a reused cache can still say them
    info: dict = field(default_factory=dict)
    _row_of: dict[str, int] | None = field(default=None, repr=False)
    _dups: set[str] = field(default_factory=set, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def n_failed(self) -> int:
        return int((~self.ok).sum())

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row indices for ids; KeyError naming the first id the cache does not hold."""
        if self._row_of is None:
            row_of: dict[str, int] = {}
            dups: set[str] = set()
            for i, key in enumerate(self.ids):
                if key in row_of:
                    dups.add(key)
                else:
                    row_of[key] = i
            self._row_of, self._dups = row_of, dups
        out = np.empty(len(ids), dtype=np.int64)
        for j, key in enumerate(ids):
            key = str(key)
            try:
                out[j] = self._row_of[key]
            except KeyError:
                raise KeyError(
                    f"id {key!r} is not in the tensor cache {self.path.name} "
                    "(no image file for it, or the cache was built for other data)"
                ) from None
            if key in self._dups:
                raise ValueError(
                    f"id {key!r} appears in more than one split of this dataset, so its "
                    "cache row is ambiguous; select rows by position instead"
                )
        return out

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Copy rows out of the memmap (sorted reads, original order back)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.size, self.size), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return out

    # Pickle the location, not the data: DataLoader workers under spawn reopen the memmap.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["images"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.images = _open_images(self.path, len(self.ids), self.config.size)


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return (s or "dataset")[:40]


def cache_dir_for(ds: Any, cfg: PreprocessConfig, root: Path | None = None) -> Path:
    """Where the cache for (dataset, deterministic preprocessing) lives."""
    base = Path(root) if root is not None else get_settings().cache_dir / "tensors"
    return base / f"{_slug(ds.name)}-{ds.fingerprint[:12]}-s{cfg.size}-{cfg.cache_key()}"


def _open_images(path: Path, n: int, size: int) -> np.ndarray:
    if n == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    return np.memmap(path / IMAGES_FILE, dtype=np.uint8, mode="r", shape=(n, size, size))


def _open_dir(path: Path, cfg: PreprocessConfig, fingerprint: str) -> TensorCache | None:
    """Open a complete cache or return None (missing, half-written or for other data)."""
    index_path = path / INDEX_FILE
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return None
    try:
        if index.get("format") != CACHE_FORMAT or not index.get("complete"):
            return None
        if index["fingerprint"] != fingerprint or index["cache_key"] != cfg.cache_key():
            return None
        n, size = int(index["n"]), int(index["size"])
        ids = [str(i) for i in index["ids"]]
        ok = np.asarray(index["ok"], dtype=bool)
        if size != cfg.size or len(ids) != n or ok.shape != (n,):
            return None
        if n and (path / IMAGES_FILE).stat().st_size != n * size * size:
            return None
        images = _open_images(path, n, size)
    except (OSError, KeyError, TypeError, ValueError):
        return None
    info = {k: v for k, v in index.items() if k not in ("ids", "ok", "errors")}
    return TensorCache(
        path=path, ids=ids, images=images, ok=ok, errors=dict(index.get("errors", {})),
        config=cfg, fingerprint=fingerprint, info=info,
    )


def open_cache(ds: Any, cfg: PreprocessConfig, root: Path | None = None) -> TensorCache | None:
    """The existing complete cache for (ds, cfg), or None. Never decodes anything."""
    return _open_dir(cache_dir_for(ds, cfg, root), cfg, ds.fingerprint)


def _clean_stale(parent: Path) -> None:
    """Remove temp/trash dirs left by builds whose process is gone (killed, crashed)."""
    for p in parent.iterdir():
        if not p.is_dir() or not p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            continue
        m = re.search(r"-p(\d+)-[0-9a-f]+$", p.name)
        if m and pid_alive(int(m.group(1))) and int(m.group(1)) != os.getpid():
            continue
        if m and int(m.group(1)) == os.getpid() and p.name.startswith(_TMP_PREFIX):
            continue  # a build in another thread of this process
        shutil.rmtree(p, ignore_errors=True)


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    size = max(4, min(256, -(-n // max(1, workers * 4))))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _file_sizes(paths: list[str]) -> np.ndarray:
    """Bytes of each input file (0 when it cannot be stat'ed: its decode will say why)."""
    sizes = np.zeros(len(paths), dtype=np.int64)
    for i, path in enumerate(paths):
        try:
            sizes[i] = os.stat(path).st_size
        except OSError:
            pass
    return sizes


def throughput(images: int, nbytes: int, seconds: float) -> dict[str, float]:
    """images/s and MB/s (10^6 bytes of input files) of a build, as index.json keeps them."""
    seconds = max(seconds, 1e-9)
    return {"images_per_s": round(images / seconds, 6), "mb_per_s": round(nbytes / 1e6 / seconds, 6)}


def _rate_text(rate: dict[str, float]) -> str:
    return f"{rate['images_per_s']:.1f} images/s, {rate['mb_per_s']:.1f} MB/s"


# Workers import only h2a.data.preprocess (and imageio): never torch. Tests swap the program.
_WORKER_FN = "h2a.data.preprocess:prepare_chunk"
_WORKER_CMD = worker_code(_WORKER_FN)


def _run_chunks(
    mm_path: Path, paths: list[str], cfg: PreprocessConfig, workers: int,
    progress: ProgressFn | None, sizes: np.ndarray | None = None,
) -> dict[int, str]:
    """Decode + prepare every path into the memmap; progress says images/s and MB/s."""
    n = len(paths)
    spans = _chunks(n, workers)
    tasks = [(str(mm_path), n, a, paths[a:b], cfg.to_dict(), workers > 1) for a, b in spans]
    ends = np.concatenate([[0], np.cumsum(sizes if sizes is not None else np.zeros(n, np.int64))])
    errors: dict[int, str] = {}
    done = done_bytes = 0
    t0 = time.perf_counter()
    report(progress, 0, n, "decoding and preprocessing images")

    def collect(result: Sequence[Any]) -> None:  # (first row, [(row, message)], rows done)
        nonlocal done, done_bytes
        start, errs, count = result
        errors.update(dict(errs))
        done += count
        done_bytes += int(ends[start + count] - ends[start])
        rate = throughput(done, done_bytes, time.perf_counter() - t0)
        report(progress, done, n, f"decoding and preprocessing images ({_rate_text(rate)})")

    try:
        run_tasks(_WORKER_FN, tasks, workers, collect, what="An image preprocessing worker",
                  program=_WORKER_CMD)
    except WorkerError as exc:
        raise _worker_failure(exc) from None
    return errors


def _worker_failure(exc: WorkerError) -> CacheError:
    """A dead worker as the user should read it: SIGBUS/SIGXFSZ or ENOSPC text is a full disk."""
    if exc.code in (-signal.SIGBUS, -signal.SIGXFSZ) or any(
            "No space left" in line or "File too large" in line for line in exc.tail):
        return CacheError(
            f"The disk is full: a preprocessing worker could not write the tensor cache "
            f"(exit code {exc.code}). Free some space, choose a smaller image size, or set "
            "H2A_WORKSPACE elsewhere.")
    return CacheError(str(exc))


def _image_rows(meta: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(ids, paths) of the dataset rows that have an image file, in ``meta`` order."""
    has_path = meta["path"].notna().to_numpy()
    return [str(i) for i in meta.loc[has_path, "id"]], [str(p) for p in meta.loc[has_path, "path"]]


def _check_space(parent: Path, n: int, size: int) -> None:
    """Refuse before decoding anything when the cache cannot fit (keeping 256 MiB spare)."""
    need = n * size * size
    free = shutil.disk_usage(parent).free
    if need > free - (256 << 20):  # keep a little room for everything else
        raise CacheError(
            f"Not enough disk space for the tensor cache: {n} images at {size}x{size} need "
            f"{need / 2**30:.2f} GiB in {parent}, only {free / 2**30:.2f} GiB free. "
            "Free some space, choose a smaller image size, or set H2A_WORKSPACE elsewhere."
        )


def _build_into(tmp: Path, ds: Any, cfg: PreprocessConfig, fingerprint: str, ids: list[str],
                paths: list[str], workers: int, progress: ProgressFn | None) -> dict[str, Any]:
    """Decode every image into ``tmp`` and write its index.json last; return the index."""
    t0 = time.perf_counter()
    n, size = len(ids), cfg.size
    mm_path = tmp / IMAGES_FILE
    _reserve(mm_path, n * size * size)  # zeros: failed rows stay black
    sizes = _file_sizes(paths)
    t_decode = time.perf_counter()
    row_errors = _run_chunks(mm_path, paths, cfg, workers, progress, sizes) if n else {}
    rate = throughput(n, int(sizes.sum()), time.perf_counter() - t_decode)
    ok = np.ones(n, dtype=bool)
    errors: dict[str, str] = {}
    for row, msg in sorted(row_errors.items()):
        ok[row] = False
        errors[ids[row]] = msg
    seconds = time.perf_counter() - t0
    index = {
        "format": CACHE_FORMAT,
        "complete": True,
        "dataset": ds.name,
        "root": str(getattr(ds, "root", "")),
        "fingerprint": fingerprint,
        "cache_key": cfg.cache_key(),
        "config": cfg.to_dict(),
        "size": size,
        "n": n,
        "n_failed": int((~ok).sum()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
        "workers": workers,
        "input_bytes": int(sizes.sum()),
        **rate,  # images_per_s, mb_per_s of the decode (workers running)
        "ids": ids,
        "ok": ok.tolist(),
        "errors": errors,
    }
    with open(tmp / INDEX_FILE, "w") as fh:
        json.dump(index, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return index


def build_cache(
    ds: Any,
    cfg: PreprocessConfig,
    *,
    root: Path | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> TensorCache:
    """Open the cache for (ds, cfg), building it first if needed (or if ``force``).

    A bad file never stops the build: its row stays zero, ``ok`` is False and the
    message is kept in ``errors``. Rows are the dataset rows that have an image path,
    in ``ds.meta`` order.
    """
    final = cache_dir_for(ds, cfg, root)
    fingerprint = ds.fingerprint
    if not force:
        existing = _open_dir(final, cfg, fingerprint)
        if existing is not None:
            report(progress, len(existing), len(existing), "tensor cache reused")
            return existing

    ids, paths = _image_rows(ds.meta)
    workers = max(1, int(workers if workers is not None else get_settings().workers))
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(parent)
    _check_space(parent, len(ids), cfg.size)
    tag = f"{final.name}-p{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = parent / f"{_TMP_PREFIX}{tag}"
    tmp.mkdir()
    try:
        index = _build_into(tmp, ds, cfg, fingerprint, ids, paths, workers, progress)
        if not force and _open_dir(final, cfg, fingerprint) is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build finished first: keep it
        else:
            _publish(tmp, final, tag)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in _DISK_FULL_ERRNOS:
            raise _disk_full(parent, "the tensor cache") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cache = _open_dir(final, cfg, fingerprint)
    if cache is None:  # pragma: no cover - would mean the rename target vanished
        raise CacheError(f"Tensor cache {final} could not be opened right after building it")
    cache.built_now = True
    n, n_ok = index["n"], index["n"] - index["n_failed"]
    report(progress, n, n, f"tensor cache built ({n_ok}/{n} images ok, {_rate_text(index)})")
    return cache


def _publish(tmp: Path, final: Path, tag: str) -> None:
    """Atomically move the finished temp dir into place (replacing an old/invalid one)."""
    if final.exists():
        trash = final.parent / f"{_TRASH_PREFIX}{tag}"
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            trash = None  # someone else removed it meanwhile
        try:
            os.rename(tmp, final)
        finally:
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if final.is_dir():  # a concurrent build published first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def _as_float(values: Any, n: int, what: str) -> np.ndarray:
    """Float32 array (NaN for missing) from floats, bools or pandas nullable booleans."""
    if values is None:
        return np.full(n, np.nan, dtype=np.float32)
    arr = pd.Series(values).astype("Float64").to_numpy(dtype=np.float32, na_value=np.nan)
    if arr.shape != (n,):
        raise ValueError(f"{what} has {arr.shape[0]} values but rows has {n}")
    return arr


class CachedImageDataset(torch.utils.data.Dataset):
    """Training/embedding dataset over cache rows. Yields uint8 so 4x less data crosses
    the DataLoader; the engine normalises on the device (``preprocess.normalize``)."""

    def __init__(
        self,
        cache: TensorCache,
        rows: np.ndarray,
        targets: np.ndarray | None = None,
        sex: np.ndarray | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        n = len(self.rows)
        if n and (self.rows.min() < 0 or self.rows.max() >= len(cache)):
            raise IndexError(f"rows must be within 0..{len(cache) - 1} for this cache")
        self.targets = _as_float(targets, n, "targets")
        self.sex = _as_float(sex, n, "sex")
        self.transform = transform
        self._path = cache.path
        self._shape = (len(cache), cache.size, cache.size)
        self._images: np.ndarray | None = cache.images

    def __len__(self) -> int:
        return len(self.rows)

    def _mm(self) -> np.ndarray:
        if self._images is None:
            n, s, _ = self._shape
            self._images = _open_images(self._path, n, s)
        return self._images

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        img = torch.from_numpy(np.array(self._mm()[row], dtype=np.uint8)).unsqueeze(0)
        if self.transform is not None:
            img = self.transform(img)
        return {
            "image": img,
            "target": torch.tensor(self.targets[i], dtype=torch.float32),
            "sex": torch.tensor(self.sex[i], dtype=torch.float32),
            "row": row,
        }

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None  # reopen in the worker instead of pickling the data
        return state


__all__ = [
    "CacheError", "TensorCache", "cache_dir_for", "build_cache", "open_cache", "CachedImageDataset",
]
