"""The HTTP half of the password gate: an ASGI middleware in front of Streamlit's routes.

``h2a serve`` runs the app as ``st.App("streamlit_app.py", middleware=[HttpGate])``
(``serve_app.py``), Streamlit's own extension point for middleware, so the gate sits in
the same process and sees every HTTP request before Streamlit's handlers do. Why not an
auth proxy: one more process and port to run and document, and it could not see which
session shows which media file; in-process it reads that from Streamlit's runtime.

What it does, for every HTTP request (the websocket passes: the password form lives
there):

* hands a browser without one a random ``h2a_client`` cookie (HttpOnly, SameSite=Strict);
  ``h2a.app.auth`` binds that token to the session when the session is unlocked;
* refuses with 403, before Streamlit reads a byte of the body:
  - ``/_stcore/upload_file/<session>/...`` unless the cookie's browser unlocked that
    very session and it is still connected;
  - ``/media/<id>`` unless one of the cookie's connected, unlocked sessions shows that
    file (so a URL does not work in another browser, nor after its session ends);
  - ``/_stcore/metrics`` unless the cookie has a connected, unlocked session.

With no password configured every session is unlocked on its first run, so the same
rules hold (media still belongs to the sessions that show it).
"""

from __future__ import annotations

import logging
import os
from http.cookies import CookieError, SimpleCookie
from typing import Any, Awaitable, Callable

from h2a.gate import COOKIE, SIGN_INS, SignIns, new_token, valid_token

LOG = logging.getLogger("h2a")
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPLOAD, MEDIA, METRICS = "upload", "media", "metrics"


def classify(path: str, base: str = "") -> tuple[str, str] | None:
    """(kind, detail) for a guarded path, else None. ``detail`` is the upload's session id
    or the media file name. ``base`` is ``server.baseUrlPath`` without slashes."""
    prefix = f"/{base.strip('/')}" if base.strip("/") else ""
    if prefix:
        if not path.startswith(prefix + "/"):
            return None
        path = path[len(prefix):]
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "_stcore" and parts[1] == "upload_file":
        return UPLOAD, parts[2] if len(parts) > 2 else ""
    if parts and parts[0] == "media":
        return MEDIA, "/".join(parts[1:])
    if len(parts) >= 2 and parts[0] == "_stcore" and parts[1] == "metrics":
        return METRICS, ""
    return None


def cookie_token(scope: Scope) -> str | None:
    """The ``h2a_client`` cookie of a request, if it is well formed."""
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
            if COOKIE in jar and valid_token(jar[COOKIE].value):
                return jar[COOKIE].value
    return None


def shown_file_ids(sessions: set[str]) -> set[str]:
    """Media file ids the given sessions currently show (Streamlit's media manager)."""
    from streamlit import runtime

    if not sessions or not runtime.exists():
        return set()
    mgr = runtime.get_instance().media_file_mgr
    # No public accessor: read the manager's own map under its own lock. A Streamlit that
    # renames it makes every media request refused (fail closed), which the tests catch.
    by_session = getattr(mgr, "_files_by_session_and_coord", None)
    lock = getattr(mgr, "_lock", None)
    if by_session is None or lock is None:
        LOG.error("h2a gate: this Streamlit's media manager has no per-session map; media refused")
        return set()
    with lock:
        return {fid for sid in sessions for fid in by_session.get(sid, {}).values()}


def live_sessions(token: str | None, sign_ins: SignIns = SIGN_INS) -> set[str]:
    """The token's unlocked sessions that are connected now."""
    from streamlit import runtime

    if not runtime.exists():
        return set()
    rt = runtime.get_instance()
    return {sid for sid in sign_ins.sessions(token) if rt.is_active_session(sid)}


def allowed(kind: str, detail: str, token: str | None, sign_ins: SignIns = SIGN_INS) -> bool:
    """The rule for one guarded request (see the module docstring)."""
    sessions = live_sessions(token, sign_ins)
    if kind == UPLOAD:
        return detail in sessions
    if kind == METRICS:
        return bool(sessions)
    if kind == MEDIA:
        file_id = os.path.splitext(detail)[0]
        return bool(file_id) and file_id in shown_file_ids(sessions)
    return False


class HttpGate:
    """ASGI middleware: cookie for every browser, 403 for guarded paths not earned."""

    def __init__(self, app: Callable[..., Awaitable[None]], sign_ins: SignIns = SIGN_INS) -> None:
        self.app = app
        self.sign_ins = sign_ins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        from streamlit import config

        token = cookie_token(scope)
        guarded = classify(scope.get("path", ""), config.get_option("server.baseUrlPath") or "")
        if guarded is not None and not allowed(*guarded, token, self.sign_ins):
            await _refuse(send)  # the body is never read: a refused upload costs no memory
            return
        if token is None:
            send = _with_cookie(send, new_token(), secure=bool(config.get_option("server.sslCertFile")),
                                path="/" + (config.get_option("server.baseUrlPath") or "").strip("/"))
        await self.app(scope, receive, send)


async def _refuse(send: Send) -> None:
    body = b"Sign in first.\n"
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _with_cookie(send: Send, token: str, *, secure: bool, path: str) -> Send:
    cookie = f"{COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")

    async def wrapped(message: Message) -> None:
        if message.get("type") == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]
        await send(message)

    return wrapped
