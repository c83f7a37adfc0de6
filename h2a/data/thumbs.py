"""A small on-disk cache of thumbnails, so a gallery of full-resolution radiographs costs
one decode per image ever, not one per view.

A 2000 px PNG takes 0.1-0.2 s to decode; a page that shows 12-48 of them would spend
seconds per visit. Each thumbnail is stored once, as a ``.npy`` uint8 array under the
workspace (``cache/thumbs``), keyed by the file's path, size and mtime and the thumbnail side:
an edited or replaced file misses. Decoding goes through ``h2a.data.imageio`` (the only decoder, with its pixel
limit); a file that cannot be decoded gives a grey placeholder and a message naming the
file, and the message is cached under the same key, so a broken file is not re-read on
every view either. The cache is only an optimisation: when it cannot be written (a
read-only or full disk) thumbnails are still returned, just not kept.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h2a.data import imageio
from h2a.settings import get_settings

VERSION = 1  # bump when the way thumbnails are made changes: old entries are then ignored
PLACEHOLDER_GREY = 96


@dataclass(frozen=True)
class Thumb:
    """A displayable uint8 image; ``error`` names the file when it is a placeholder."""

    image: np.ndarray
    error: str | None = None
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def thumbs_dir() -> Path:
    """Where thumbnails live: inside the workspace's cache, next to the header database."""
    return get_settings().cache_dir / "thumbs"


def placeholder(side: int) -> np.ndarray:
    """A grey square with a darker cross: visibly 'no image' in a grid of radiographs."""
    img = np.full((side, side), PLACEHOLDER_GREY, np.uint8)
    idx = np.arange(side)
    img[idx, idx] = img[idx, side - 1 - idx] = 40
    return img


def cache_key(path: str | os.PathLike, side: int) -> str | None:
    """Hex key of (absolute path, size, mtime, side, version), or None when the file is gone.

    The path is not resolved through links: the cached error message names the file as
    the caller knows it."""
    try:
        where = os.path.abspath(path)
        st = os.stat(where)
    except OSError:
        return None
    text = f"{VERSION}|{where}|{st.st_size}|{st.st_mtime_ns}|{side}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def make_thumbnail(path: str | os.PathLike, side: int) -> np.ndarray:
    """Decode (bounded, through imageio) and shrink so the longer side is at most ``side``.

    Raises imageio.ImageReadError for a file that cannot be read.
    """
    import cv2

    img = imageio.read_image(path)
    scale = side / max(img.shape)
    if scale < 1:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return imageio.to_uint8(img)


def get_thumbnail(path: str | os.PathLike, side: int = 192, root: Path | None = None) -> Thumb:
    """The thumbnail of one file: from the cache when it is there, else made and stored."""
    name = Path(path).name
    key = cache_key(path, side)
    if key is None:
        return Thumb(placeholder(side), f"{name}: file not found")
    folder = (root or thumbs_dir()) / key[:2]
    cached = _read(folder, key, side)
    if cached is not None:
        return cached
    try:
        img = make_thumbnail(path, side)
    except imageio.ImageReadError as exc:
        _write(folder / f"{key}.err", str(exc).encode())
        return Thumb(placeholder(side), str(exc))
    _write(folder / f"{key}.npy", _npy_bytes(img))
    return Thumb(img)


def _read(folder: Path, key: str, side: int) -> Thumb | None:
    """A cached entry, or None on a miss (an unreadable entry is a miss, never an error)."""
    try:
        arr = np.load(folder / f"{key}.npy", allow_pickle=False)
        if arr.dtype == np.uint8 and arr.ndim == 2:
            return Thumb(arr, from_cache=True)
    except (OSError, ValueError, EOFError):
        pass
    try:
        message = (folder / f"{key}.err").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return Thumb(placeholder(side), message, from_cache=True) if message else None


def _npy_bytes(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(img), allow_pickle=False)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Write-then-rename, so a reader or a kill never sees half an entry; failures are
    swallowed (the cache is an optimisation, and the thumbnail is already in hand)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
