"""Which browsers have signed in, for the HTTP side of the server.

Why: Streamlit serves uploads (``/_stcore/upload_file/<session>/<file>``), media
(``/media/<id>``) and metrics (``/_stcore/metrics``) over plain HTTP beside the websocket
that carries the password form. Before this, a locked session could PUT 200 MB files and
anyone could read a ``/media`` URL while some session showed it. The password is
checked over the websocket, so the browser's HTTP requests need a tie to a signed-in
session: a random, HttpOnly cookie (``COOKIE``) that the gate in ``h2a.app.http_gate``
hands every browser. When a session is unlocked, its script binds (cookie token,
session id) here; the gate serves an HTTP request only for a token bound to a live
session, and a media file only to a token whose sessions show it.

Core (no streamlit): script threads write, the server's event loop reads, one lock.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict

COOKIE = "h2a_client"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
MAX_BINDINGS = 10_000  # bounded memory: the oldest binding goes first


def new_token() -> str:
    """A fresh cookie value: 256 random bits, not derived from anything a client sends."""
    return secrets.token_urlsafe(32)


def valid_token(token: object) -> bool:
    """True for a value ``new_token`` could have made (anything else gets a new cookie)."""
    return isinstance(token, str) and _TOKEN.fullmatch(token) is not None


class SignIns:
    """Session id -> the cookie token of the browser that unlocked it."""

    def __init__(self, max_bindings: int = MAX_BINDINGS) -> None:
        self._token_of: OrderedDict[str, str] = OrderedDict()
        self._sessions_of: dict[str, set[str]] = {}
        self._max = max_bindings
        self._lock = threading.Lock()

    def bind(self, token: str | None, session_id: str) -> bool:
        """Record that ``session_id`` is unlocked in the browser holding ``token``.
        Returns False (and records nothing) for a missing or malformed token."""
        if not valid_token(token) or not session_id:
            return False
        assert token is not None
        with self._lock:
            old = self._token_of.pop(session_id, None)
            if old is not None and old != token:
                self._drop(old, session_id)
            self._token_of[session_id] = token
            self._sessions_of.setdefault(token, set()).add(session_id)
            while len(self._token_of) > self._max:
                sid, tok = self._token_of.popitem(last=False)
                self._drop(tok, sid)
        return True

    def unbind(self, session_id: str) -> None:
        with self._lock:
            token = self._token_of.pop(session_id, None)
            if token is not None:
                self._drop(token, session_id)

    def sessions(self, token: str | None) -> frozenset[str]:
        """The sessions unlocked in the browser holding ``token`` (alive or not)."""
        if not valid_token(token):
            return frozenset()
        with self._lock:
            return frozenset(self._sessions_of.get(token, ()))  # type: ignore[arg-type]

    def holds(self, token: str | None, session_id: str) -> bool:
        with self._lock:
            return valid_token(token) and self._token_of.get(session_id) == token

    def clear(self) -> None:
        with self._lock:
            self._token_of.clear()
            self._sessions_of.clear()

    def _drop(self, token: str, session_id: str) -> None:
        sessions = self._sessions_of.get(token)
        if sessions is not None:
            sessions.discard(session_id)
            if not sessions:
                del self._sessions_of[token]


SIGN_INS = SignIns()  # one per server process: the app's scripts and the HTTP gate share it
