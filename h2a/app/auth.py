"""The password gate every page passes first, when a password hash is configured.

The hash comes from ``H2A_PASSWORD_HASH`` or, unset, ``password_hash`` in Streamlit's
secrets.toml. Checking, hashing and the rate limit live in ``h2a.server`` (no streamlit);
this module only draws the form and keeps the unlocked flag in the server-side session
state (a browser cannot set it). A malformed hash fails closed: nothing is shown.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import streamlit as st
from streamlit import config as st_config

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
        return
    try:
        line = configured_hash()
        if line is None:
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
    key = _session_key()
    lim = limiter()
    wait = lim.wait_s(key)
    if wait > 0:
        st.error(f"Too many attempts. Try again in {wait:.0f} s.")
        return
    if verify_password(password, line):
        lim.succeeded(key)
        st.session_state[UNLOCKED] = True
        st.session_state.pop("h2a_password", None)
        st.rerun()
    lim.failed(key)
    st.error("Wrong password.")
