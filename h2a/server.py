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
MIN_PASSWORD_CHARS = 8  # shorter passwords fall to a few thousand guesses; hash-password refuses them
# Ceiling on a configured hash's cost. Every sign-in attempt runs scrypt once with the
# hash's parameters, so a hash (a typo, or a hostile edit of the secrets file) asking for
# N=2**20, r=32 would make each attempt take 1 GiB and seconds: a few tabs take the server
# down. Memory is 128*N*r bytes; work grows with N*r*p. The ceiling is 2**17 / 16 / 4,
# at most 256 MiB, and at most 32 times the default's work (N*r*p <= 2**22).
MAX_SCRYPT_N, MAX_SCRYPT_R, MAX_SCRYPT_P = 2**17, 16, 4
MAX_SCRYPT_MEMORY = 256 * 2**20
MAX_SCRYPT_WORK = 2**22


class PasswordHashError(ValueError):
    """A configured password hash that cannot be parsed: the gate then fails closed."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt_memory(n: int, r: int) -> int:
    """Bytes scrypt needs for N and r (its V array: 128*N*r)."""
    return 128 * n * r


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=2 * _scrypt_memory(n, r) + (1 << 20))


def password_problem(password: str) -> str | None:
    """Why ``password`` is too weak to protect a shared server, or None. One rule for
    ``hash-password`` and any other place that makes a hash."""
    if not password:
        return "the password is empty"
    if not password.strip():
        return "the password is only whitespace"
    if len(password) < MIN_PASSWORD_CHARS:
        return f"the password is shorter than {MIN_PASSWORD_CHARS} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"the password is longer than {MAX_PASSWORD_CHARS} characters"
    return None


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The line to put in ``H2A_PASSWORD_HASH`` (or ``password_hash`` in secrets.toml).
    Raises ValueError (one line, why) for a password ``password_problem`` refuses."""
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
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
    if n < 2**10 or n & (n - 1) or r < 1 or p < 1:
        raise PasswordHashError("the password hash has out-of-range scrypt parameters")
    if (n > MAX_SCRYPT_N or r > MAX_SCRYPT_R or p > MAX_SCRYPT_P
            or _scrypt_memory(n, r) > MAX_SCRYPT_MEMORY or n * r * p > MAX_SCRYPT_WORK):
        raise PasswordHashError(
            f"the password hash's scrypt parameters (N={n}, r={r}, p={p}, "
            f"{_scrypt_memory(n, r) / 2**20:.0f} MiB per check) exceed the ceiling "
            f"(N<=2**17, r<=16, p<=4, at most {MAX_SCRYPT_MEMORY // 2**20} MiB and N*r*p<=2**22); "
            "make a new one with `h2a hash-password`")
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
    last_failure: float = 0.0


@dataclass(frozen=True)
class Admission:
    """What the limiter says about one attempt: ``refuse_s`` > 0 means refuse it now
    (without checking the password) and say when to try again; otherwise wait
    ``delay_s`` (0 unless a flood is on) and then check."""

    refuse_s: float = 0.0
    delay_s: float = 0.0


@dataclass
class LoginLimiter:
    """Back-off per client address and per session, and a flood brake that slows
    guessing without ever refusing a client that has not failed.

    * Per key (``addr:...`` for the client's address, ``session:...`` for one browser
      session): ``tries`` wrong passwords are checked; the ``tries``-th failure starts a
      wait of ``base_delay_s``, doubling with each further failure up to ``max_delay_s``.
      The address key is what makes a reload or a new tab keep its count.
    * Flood: when ``flood_addresses`` different addresses have failed within
      ``window_s`` (many addresses guessing at once), every check from an address that
      has failed before is queued behind one global pace, one check per ``pace_s``
      (and refused when its turn is more than ``max_queue_s`` away). An address with no
      failure is never delayed or refused by the flood: the old process-wide cap (20
      failures from anyone locked everyone out) let an attacker keep the team out.

    ``clock`` is injectable so tests need no sleeping.
    """

    tries: int = 3
    base_delay_s: float = 30.0
    max_delay_s: float = 900.0
    flood_addresses: int = 20
    window_s: float = 60.0
    pace_s: float = 1.0
    max_queue_s: float = 20.0
    forget_after_s: float = 24 * 3600.0  # a key's failures are forgotten after a quiet day
    clock: Callable[[], float] = time.monotonic
    _records: dict[str, _Record] = field(default_factory=dict)
    _failing: dict[str, float] = field(default_factory=dict)  # address key -> last failure time
    _next_slot: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, *keys: str) -> float:
        """Seconds the back-off of any of ``keys`` still runs (0 = may try now)."""
        with self._lock:
            now = self.clock()
            return self._backoff(now, keys)

    def flooded(self) -> bool:
        """True while many addresses are failing at once (checks from failing ones are paced)."""
        with self._lock:
            self._expire(self.clock())
            return len(self._failing) >= self.flood_addresses

    def admit(self, address: str, *others: str) -> Admission:
        """Whether an attempt from ``address`` (plus e.g. its session key) is checked, and
        after how long. Reserves the attempt's place in the flood queue."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            keys = (address, *others)
            refuse = self._backoff(now, keys)
            if refuse > 0:
                return Admission(refuse_s=refuse)
            failing = any(self._records.get(k, _Record()).failures for k in keys)
            if len(self._failing) < self.flood_addresses or not failing:
                return Admission()
            slot = max(now, self._next_slot)
            if slot - now > self.max_queue_s:
                return Admission(refuse_s=slot - now)
            self._next_slot = slot + self.pace_s
            return Admission(delay_s=slot - now)

    def failed(self, address: str, *others: str) -> None:
        """Record a wrong password from ``address`` (and ``others``)."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            for key in (address, *others):
                rec = self._records.pop(key, None) or _Record()
                self._records[key] = rec  # most recent last: the trim below drops the oldest
                rec.failures += 1
                rec.last_failure = now
                extra = rec.failures - self.tries
                if extra >= 0:
                    rec.locked_until = now + min(self.max_delay_s, self.base_delay_s * 2 ** extra)
            self._failing[address] = now
            while len(self._records) > 10_000:  # bounded memory under a flood of new sessions
                self._records.pop(next(iter(self._records)))

    def succeeded(self, *keys: str) -> None:
        """The right password: forget these keys' failures."""
        with self._lock:
            for key in keys:
                self._records.pop(key, None)
                self._failing.pop(key, None)

    def _backoff(self, now: float, keys: Iterable[str]) -> float:
        return max([0.0] + [self._records[k].locked_until - now for k in keys if k in self._records])

    def _expire(self, now: float) -> None:
        for key in [k for k, t in self._failing.items() if t + self.window_s <= now]:
            del self._failing[key]
        while self._records:
            key = next(iter(self._records))
            rec = self._records[key]
            if rec.last_failure + self.forget_after_s > now or rec.locked_until > now:
                break
            del self._records[key]


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
