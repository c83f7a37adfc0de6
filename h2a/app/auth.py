"""The password gate every page passes first, when a password hash is configured.

The hash comes from ``H2A_PASSWORD_HASH`` or, unset, ``password_hash`` in Streamlit's
secrets.toml. Checking, hashing and the rate limit live in ``h2a.server`` (no streamlit);
this module only draws the form and keeps the unlocked flag in the server-side session
state (a browser cannot set it). A malformed hash fails closed: nothing is shown.

Attempts are limited per client address and per session (``LoginLimiter``): the address
is what Streamlit's connection reports (``st.context.ip_address``; uvicorn takes it from
``X-Forwarded-For`` only when the connection comes from this machine, i.e. a local
reverse proxy), so a reload or a new tab keeps its count. An unlocked session is bound
to its browser's ``h2a_client`` cookie (``h2a.gate``): that is what lets the HTTP gate
serve its uploads and images and nobody else's.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import streamlit as st
from streamlit import config as st_config
from streamlit.runtime.scriptrunner import get_script_run_ctx

from h2a.gate import COOKIE, SIGN_INS
from h2a.server import LoginLimiter, PasswordHashError, parse_password_hash, verify_password
from h2a.settings import get_settings

UNLOCKED = "h2a_unlocked"


def configured_hash() -> str | None:
    """The hash line to check against, or None when the server asks for no password.
    A secrets file that exists but cannot be read raises PasswordHashError (fail closed)."""
    env = get_settings().password_hash
    if env:
        return env
    try:
        value = st.secrets.get("password_hash")
    except FileNotFoundError as exc:  # Streamlit's StreamlitSecretNotFoundError: missing or unreadable
        if any(Path(p).exists() for p in st_config.get_option("secrets.files")):
            raise PasswordHashError(f"the secrets file cannot be read ({type(exc).__name__})") from None
        return None
    if not value:
        return None
    return str(value).strip() or None


@st.cache_resource(show_spinner=False)
def limiter() -> LoginLimiter:
    """One limiter per server process, shared by every session."""
    return LoginLimiter()


def _session_key() -> str:
    """A random id for this browser session, kept in its server-side state."""
    return st.session_state.setdefault("h2a_login_key", secrets.token_hex(8))


def client_keys() -> tuple[str, str]:
    """The limiter's keys for this attempt: the client's address, then this session."""
    ip = st.context.ip_address  # None for this machine (and not a str under AppTest)
    return f"addr:{ip if isinstance(ip, str) and ip else 'loopback'}", f"session:{_session_key()}"


def _bind_browser() -> None:
    """Tie this unlocked session to its browser's gate cookie (no cookie: AppTest, or
    plain ``streamlit run`` without the gate; nothing to bind)."""
    ctx = get_script_run_ctx()
    if ctx is not None:
        SIGN_INS.bind(st.context.cookies.get(COOKIE), ctx.session_id)


def is_unlocked() -> bool:
    """True when no password is configured or this session has entered it."""
    if st.session_state.get(UNLOCKED):
        return True
    try:
        return configured_hash() is None
    except PasswordHashError:
        return False


def require_password() -> None:
    """Show the password form and stop the run until this session has entered the password."""
    if st.session_state.get(UNLOCKED):
        _bind_browser()
        return
    try:
        line = configured_hash()
        if line is None:
            _bind_browser()
            return
        parse_password_hash(line)
    except PasswordHashError as exc:
        st.title("H2A · Hand-to-Age")
        st.error(f"This server is misconfigured and stays closed: {exc}.")
        st.stop()
    st.title("H2A · Hand-to-Age")
    with st.form("h2a-login"):
        password = st.text_input("Password", type="password", key="h2a_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        _attempt(line, password or "")
    st.caption("This H2A server asks for a password. Ask its admin if you do not have it.")
    st.stop()


def _attempt(line: str, password: str) -> None:
    keys = client_keys()
    lim = limiter()
    admission = lim.admit(*keys)
    if admission.refuse_s > 0:
        st.error(f"Too many attempts. Try again in {admission.refuse_s:.0f} s.")
        return
    if admission.delay_s > 0:  # a flood is on and this client has failed before: wait its turn
        time.sleep(admission.delay_s)
    if verify_password(password, line):
        lim.succeeded(*keys)
        st.session_state[UNLOCKED] = True
        st.session_state.pop("h2a_password", None)
        _bind_browser()
        st.rerun()
    lim.failed(*keys)
    st.error("Wrong password.")
