"""A browser-less Streamlit client for the hostile-member tests: the same HTTP and
websocket calls a browser makes, from Python, so a test can play an attacker (many fast
guesses, hand-made upload and media requests) and a user at once without Chromium.

It speaks Streamlit's own protocol (``BackMsg`` / ``ForwardMsg`` protobufs over
``/_stcore/stream``): open the page over HTTP (cookies), connect the websocket, ask for a
script run, read the elements until the run ends. ``forwarded_for`` sets
``X-Forwarded-For``, which uvicorn trusts from this machine only: that is how one test
process plays clients at several addresses, as a reverse proxy on the server would.
"""

from __future__ import annotations

import http.cookiejar
import re
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.sync.client import connect

MEDIA_URL = re.compile(rb"/media/[0-9a-f]{16,}\.[a-z0-9]+")


@dataclass
class Run:
    """What one script run put on the page."""

    elements: list = field(default_factory=list)  # streamlit.proto Element messages
    raw: bytes = b""  # every ForwardMsg of the run, serialised (to find media URLs)

    def of(self, kind: str) -> list:
        return [getattr(e, kind) for e in self.elements if e.WhichOneof("type") == kind]

    def errors(self) -> list[str]:
        return [a.body for a in self.of("alert") if a.format == a.ERROR]

    def media_urls(self) -> list[str]:
        return sorted({m.decode() for m in MEDIA_URL.findall(self.raw)})


class Client:
    """One browser: its own cookie jar and websocket (one Streamlit session)."""

    def __init__(self, base_url: str, forwarded_for: str | None = None, timeout: float = 120) -> None:
        self.base = base_url.rstrip("/")
        self.forwarded_for = forwarded_for
        self.timeout = timeout
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  urllib.request.ProxyHandler({}))
        self.ws = None
        self.session_id = ""
        self.page_hash = ""
        self.form: tuple[str, str] | None = None  # (password input id, Sign in button id)
        self.pages: dict[str, str] = {}  # url path name -> page script hash (st.navigation's menu)
        self.get("/")  # the page: the gate's cookie
        self.get("/_stcore/health")  # Streamlit's XSRF cookie

    # ------------------------------------------------------------ HTTP

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def _headers(self) -> dict[str, str]:
        return {"X-Forwarded-For": self.forwarded_for} if self.forwarded_for else {}

    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None, cookies: bool = True) -> tuple[int, bytes]:
        """(status, body) of one request; ``cookies=False`` sends none (a stranger)."""
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={**self._headers(), **(headers or {})})
        opener = self.opener if cookies else urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str, cookies: bool = True) -> tuple[int, bytes]:
        return self.request("GET", path, cookies=cookies)

    def upload(self, payload: bytes, name: str = "hand.png", session_id: str | None = None) -> tuple[int, bytes]:
        """PUT one file where the file uploader would (``/_stcore/upload_file/SESSION/FILE``)."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                   "X-Xsrftoken": self.cookie("_streamlit_xsrf") or ""}
        sid = session_id if session_id is not None else self.session_id
        return self.request("PUT", f"/_stcore/upload_file/{sid}/{uuid.uuid4()}", data=body, headers=headers)

    # ------------------------------------------------------------ websocket

    def connect(self) -> Run:
        """Open a session (a page load) and return its first run."""
        self.close()
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.jar)
        headers = {"Cookie": cookie, **self._headers()}
        url = "ws" + self.base[len("http"):] + "/_stcore/stream"
        self.ws = connect(url, subprotocols=["streamlit"], additional_headers=headers, proxy=None,
                          max_size=None, open_timeout=self.timeout, origin=self.base)
        run = self.rerun()
        texts = [t for t in run.of("text_input") if t.label == "Password"]
        buttons = [b for b in run.of("button") if b.label == "Sign in"]
        self.form = (texts[0].id, buttons[0].id) if texts and buttons else None
        return run

    def rerun(self, widgets: list[WidgetState] | None = None) -> Run:
        """Ask for a script run (with these widget values) and read it to its end."""
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_script_hash = self.page_hash
        msg.rerun_script.widget_states.widgets.extend(widgets or [])
        self.ws.send(msg.SerializeToString())
        return self._read_run()

    def _read_run(self) -> Run:
        run = Run()
        deadline = time.monotonic() + self.timeout
        while True:
            raw = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            fwd = ForwardMsg()
            fwd.ParseFromString(raw)
            run.raw += raw
            kind = fwd.WhichOneof("type")
            if kind == "new_session":
                self.session_id = fwd.new_session.initialize.session_id or self.session_id
                self.page_hash = fwd.new_session.page_script_hash or self.page_hash
            elif kind == "navigation":
                self.pages.update({p.url_pathname: p.page_script_hash for p in fwd.navigation.app_pages})
                self.page_hash = fwd.navigation.page_script_hash or self.page_hash
            elif kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                run.elements.append(fwd.delta.new_element)
            elif kind == "script_finished":
                if fwd.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    return run
                run = Run()  # st.rerun(): the next run is the one that shows

    def goto(self, url_pathname: str) -> Run:
        """Open another page of the menu (as a click on it does)."""
        self.page_hash = self.pages[url_pathname]
        return self.rerun()

    def sign_in(self, password: str) -> Run:
        """Fill the password form and press *Sign in*, as the browser submits a form."""
        assert self.form is not None, "no password form on this session's page"
        text_id, button_id = self.form
        return self.rerun([WidgetState(id=text_id, string_value=password),
                           WidgetState(id=button_id, trigger_value=True)])

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
