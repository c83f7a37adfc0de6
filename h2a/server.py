"""Serving H2A to a team: password hashes, login rate limits, allowed data folders, the
heavy-work gate and short error ids. Core (no streamlit), so the CLI and tests use the same
rules as the app's gate in ``h2a.app.auth``.

Why each piece exists: the app is often left running on a shared workstation. Without a
password anyone who reaches the port can read every dataset the process can; a plain
password comparison leaks timing; unlimited attempts allow guessing; a typed folder path
must not escape the folders the admin meant to share; several large uploads at once must
not multiply the peak memory; and a traceback shown in the browser leaks paths and code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from h2a.settings import get_settings

LOG = logging.getLogger("h2a")

# ---------------------------------------------------------------- password hashes

# Format (one line, no shell-special characters, so it can be exported unquoted):
#   scrypt:N:r:p:SALT:HASH
# SALT and HASH are URL-safe base64 without padding; HASH is hashlib.scrypt(password
# UTF-8, salt, n=N, r=r, p=p, dklen=32). N=2**14, r=8, p=1 needs 16 MiB and ~50 ms per check.
SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
MAX_PASSWORD_CHARS = 1024  # longer input is refused before hashing (it would only cost CPU)


class PasswordHashError(ValueError):
    """A configured password hash that cannot be parsed: the gate then fails closed."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=256 * n * r + (1 << 20))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The line to put in ``H2A_PASSWORD_HASH`` (or ``password_hash`` in secrets.toml)."""
    if not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{SCHEME}:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{_b64(salt)}:{_b64(key)}"


@dataclass(frozen=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def parse_password_hash(line: str) -> PasswordHash:
    """Parse and sanity-check a hash line; raises PasswordHashError naming what is wrong."""
    parts = line.strip().split(":")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise PasswordHashError("the password hash must look like scrypt:N:r:p:SALT:HASH "
                                "(make one with `h2a hash-password`)")
    try:
        n, r, p = (int(v) for v in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError as exc:
        raise PasswordHashError(f"the password hash is malformed: {exc}") from None
    if n < 2**10 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise PasswordHashError("the password hash has out-of-range scrypt parameters")
    if len(salt) < 8 or len(key) != KEY_BYTES:
        raise PasswordHashError("the password hash has a short salt or a wrong-sized key")
    return PasswordHash(n, r, p, salt, key)


def verify_password(password: str, line: str) -> bool:
    """True when ``password`` matches the hash line; the comparison is constant-time."""
    stored = parse_password_hash(line)
    if not password or len(password) > MAX_PASSWORD_CHARS:
        return False
    return hmac.compare_digest(_scrypt(password, stored.salt, stored.n, stored.r, stored.p), stored.key)


# ---------------------------------------------------------------- login rate limit

@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0


@dataclass
class LoginLimiter:
    """Per-key back-off plus a process-wide cap on failed logins.

    A key (one browser session) gets ``free_failures`` tries, then waits ``base_delay_s``,
    doubling with each further failure up to ``max_delay_s``. Because a new tab is a new
    session, at most ``global_failures`` failures per ``global_window_s`` are accepted from
    everyone together; past that every attempt waits until the window clears. ``clock`` is
    injectable so tests need no sleeping.
    """

    free_failures: int = 3
    base_delay_s: float = 30.0
    max_delay_s: float = 900.0
    global_failures: int = 20
    global_window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _records: dict[str, _Record] = field(default_factory=dict)
    _recent: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, key: str) -> float:
        """Seconds ``key`` must wait before its next attempt (0 = may try now)."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            own = max(0.0, self._records.get(key, _Record()).locked_until - now)
            shared = 0.0
            if len(self._recent) >= self.global_failures:
                shared = max(0.0, self._recent[0] + self.global_window_s - now)
            return max(own, shared)

    def failed(self, key: str) -> None:
        """Record a wrong password for ``key``."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            rec = self._records.setdefault(key, _Record())
            rec.failures += 1
            extra = rec.failures - self.free_failures
            if extra > 0:
                rec.locked_until = now + min(self.max_delay_s, self.base_delay_s * 2 ** (extra - 1))
            self._recent.append(now)
            if len(self._records) > 10_000:  # bounded memory under a flood of new sessions
                self._records.pop(next(iter(self._records)))

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._recent and self._recent[0] + self.global_window_s <= now:
            self._recent.popleft()


# ---------------------------------------------------------------- allowed data folders

class PathNotAllowed(ValueError):
    """A folder outside the allowed data roots (after resolving links, ``..`` and relative parts)."""


def resolve_path(path: str | os.PathLike, base: Path | None = None) -> Path:
    """``path`` made absolute (against ``base``, default the working directory), with ``~``,
    ``..`` and every symlink resolved: what the check must see, not what was typed."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return p.resolve(strict=False)


def check_data_path(path: str | os.PathLike, roots: Iterable[Path] | None = None,
                    base: Path | None = None) -> Path:
    """The resolved folder when it lies in (or is) one of ``roots`` (default
    ``Settings.data_roots``); raises PathNotAllowed otherwise. Load the returned path, not
    the typed one, so a link swapped after the check cannot redirect the load."""
    roots = list(get_settings().data_roots if roots is None else roots)
    resolved = resolve_path(path, base)
    allowed = [resolve_path(r, base) for r in roots]
    if any(resolved == r or resolved.is_relative_to(r) for r in allowed):
        return resolved
    where = ", ".join(str(r) for r in allowed) or "none configured"
    raise PathNotAllowed(f"{path} is outside the folders this server shares ({where}). "
                         "The server's admin can add folders with H2A_DATA_ROOTS.")


# ---------------------------------------------------------------- heavy work

_HEAVY: dict[int, threading.BoundedSemaphore] = {}
_HEAVY_LOCK = threading.Lock()


def heavy_slots(slots: int | None = None) -> threading.BoundedSemaphore:
    """The process-wide semaphore for decode + model work (``Settings.predict_slots`` at once)."""
    n = slots if slots is not None else get_settings().predict_slots
    with _HEAVY_LOCK:
        return _HEAVY.setdefault(n, threading.BoundedSemaphore(n))


@contextmanager
def heavy_work(slots: int | None = None) -> Iterator[None]:
    """Hold one heavy-work slot: N sessions predicting at once queue here instead of each
    holding a full-size decode and the model's activations at the same time."""
    sem = heavy_slots(slots)
    with sem:
        yield


# ---------------------------------------------------------------- errors and logs

def new_error_id() -> str:
    """A short id the page shows and the log line carries, to find one failure in the log."""
    return secrets.token_hex(4)


def log_page_error(exc: BaseException, where: str = "") -> str:
    """Log ``exc`` with its traceback under a fresh id; return the id for the page to show."""
    error_id = new_error_id()
    LOG.error("page error %s%s: %s: %s", error_id, f" on {where}" if where else "", type(exc).__name__, exc,
              exc_info=(type(exc), exc, exc.__traceback__))
    return error_id


def configure_logging() -> None:
    """Send the ``h2a`` logger's INFO and above to stderr once (the server's log)."""
    if not any(getattr(h, "_h2a", False) for h in LOG.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._h2a = True  # type: ignore[attr-defined]
        LOG.addHandler(handler)
    if LOG.level == logging.NOTSET or LOG.level > logging.INFO:
        LOG.setLevel(logging.INFO)
