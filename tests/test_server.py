"""A server that is closed by default (issue 17): localhost and no tracebacks in the
config, the password gate on every page, login rate limits, allowed data folders, error
ids instead of tracebacks, serialised heavy predictions, and `h2a serve` / `hash-password`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import tomllib
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO, run_cli

ALL_PAGES = ["app_pages/home.py", "app_pages/population.py", "app_pages/preprocessing.py",
             "app_pages/training.py", "app_pages/evaluation.py", "app_pages/predict.py",
             "app_pages/sex.py", "app_pages/clusters.py", "app_pages/studies.py"]
PASSWORD = "correct horse battery staple"


# ---------------------------------------------------------------- defaults

def test_config_binds_localhost_and_hides_error_details() -> None:
    from streamlit import config

    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "localhost"
    assert cfg["client"]["showErrorDetails"] == config.ShowErrorDetailsConfigOptions.NONE == "none"


def _app() -> AppTest:
    return AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)


def _all_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader", "exception"):
        parts += [str(e.value) for e in at.get(kind)]
    return "\n".join(parts)


def test_page_error_shows_an_id_and_logs_the_traceback(monkeypatch, demo_dir, caplog) -> None:
    import h2a.app.state

    def boom(*_a, **_k):
        raise RuntimeError("secret detail /very/secret/path.py")

    at = _app()
    at.run()
    monkeypatch.setattr(h2a.app.state, "require_dataset", boom)
    with caplog.at_level("ERROR", logger="h2a"):
        at.switch_page("app_pages/home.py").run()
    [shown] = at.exception
    m = re.fullmatch(r"Something went wrong \(error id ([0-9a-f]{8})\); the server log has the details\.",
                     shown.value)
    assert m, shown.value
    assert not shown.stack_trace  # no frames, no paths
    assert "secret" not in _all_text(at) and "RuntimeError" not in _all_text(at) + shown.proto.type
    [record] = [r for r in caplog.records if m.group(1) in r.getMessage()]
    assert "secret detail" in record.getMessage() and record.exc_info[0] is RuntimeError


# ---------------------------------------------------------------- password: core

def test_password_hash_roundtrip_salted_and_documented_format() -> None:
    from h2a.server import hash_password, parse_password_hash, verify_password

    line = hash_password(PASSWORD)
    assert re.fullmatch(r"scrypt:16384:8:1:[A-Za-z0-9_-]{22}:[A-Za-z0-9_-]{43}", line), line
    assert PASSWORD not in line
    assert verify_password(PASSWORD, line)
    assert not verify_password(PASSWORD + " ", line) and not verify_password("", line)
    assert hash_password(PASSWORD) != line  # a fresh salt each time
    assert parse_password_hash(line).salt != parse_password_hash(hash_password(PASSWORD)).salt
    assert verify_password(PASSWORD, _known_hash())  # the format README documents, made by hand


@pytest.mark.parametrize("bad", ["", "s3cret", "pbkdf2:1:2:3:aa:bb", "scrypt:16384:8:1:c2FsdHNhbHQ:short",
                                 "scrypt:1000:8:1:c2FsdHNhbHRzYWx0:" + "A" * 43, "scrypt:x:8:1:a:b"])
def test_malformed_hash_is_refused(bad: str) -> None:
    from h2a.server import PasswordHashError, verify_password

    with pytest.raises(PasswordHashError):
        verify_password(PASSWORD, bad)


def test_verify_compares_in_constant_time(monkeypatch) -> None:
    import h2a.server as server

    calls = []
    real = server.hmac.compare_digest
    monkeypatch.setattr(server.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    line = server.hash_password(PASSWORD)
    assert server.verify_password(PASSWORD, line) and not server.verify_password("nope", line)
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_login_limiter_backs_off_per_address_and_session() -> None:
    from h2a.server import LoginLimiter

    clock = FakeClock()
    lim = LoginLimiter(tries=3, base_delay_s=30, max_delay_s=120, clock=clock)
    for _ in range(3):
        assert lim.admit("addr:a", "session:1").refuse_s == 0
        lim.failed("addr:a", "session:1")
    assert lim.wait_s("addr:a") == 30  # three tries, then the back-off (issue 30: not four)
    assert lim.admit("addr:a", "session:2").refuse_s == 30  # a reload (new session) keeps the count
    assert lim.admit("addr:b", "session:3").refuse_s == 0  # only that address waits
    clock.t += 30
    lim.failed("addr:a", "session:2")
    assert lim.wait_s("addr:a") == 60  # doubles
    lim.succeeded("addr:a", "session:2")  # the right password clears the record
    assert lim.wait_s("addr:a") == 0


def test_login_limiter_flood_paces_failing_addresses_and_never_refuses_a_clean_one() -> None:
    """Many addresses failing at once: their next checks queue one a second; an address
    that has not failed is checked at once (the old global cap locked the team out)."""
    from h2a.server import Admission, LoginLimiter

    clock = FakeClock()
    lim = LoginLimiter(flood_addresses=10, window_s=60, pace_s=1.0, max_queue_s=5, clock=clock)
    for i in range(10):
        assert lim.admit(f"addr:bot{i}") == Admission()  # a first guess: checked at once
        lim.failed(f"addr:bot{i}")
    assert lim.flooded()
    assert lim.admit("addr:user").refuse_s == lim.admit("addr:user").delay_s == 0
    delays = [lim.admit(f"addr:bot{i}").delay_s for i in range(6)]
    assert delays == [0, 1, 2, 3, 4, 5]  # one check a second among failing addresses
    assert lim.admit("addr:bot7").refuse_s > 5  # a queue longer than max_queue_s: refused, not held
    assert lim.admit("addr:user").delay_s == 0
    clock.t += 61
    assert not lim.flooded() and lim.admit("addr:bot8").delay_s == 0


def test_login_limiter_cap_is_the_max_delay() -> None:
    from h2a.server import LoginLimiter

    clock = FakeClock()
    lim = LoginLimiter(tries=1, base_delay_s=10, max_delay_s=25, clock=clock)
    for expected in (10, 20, 25, 25):
        lim.failed("k")
        assert lim.wait_s("k") == expected


# ---------------------------------------------------------------- password: the gate on every page

@pytest.fixture
def password_set(monkeypatch):
    monkeypatch.setenv("H2A_PASSWORD_HASH", _known_hash())

    def clear() -> None:  # a fresh process-wide limiter for each test
        try:
            from h2a.app import auth
        except ImportError:  # today's code has no gate: the test must fail on the page, not here
            return
        auth.limiter.clear()

    clear()
    yield
    clear()


def _known_hash() -> str:
    """PASSWORD's hash in the documented format, built here with hashlib alone."""
    import base64
    import hashlib

    salt = b"saltsaltsaltsalt"
    key = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    b64 = lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")  # noqa: E731
    return f"scrypt:16384:8:1:{b64(salt)}:{b64(key)}"


def _sign_in(at: AppTest, password: str) -> AppTest:
    at.text_input(key="h2a_password").set_value(password)
    [button] = [b for b in at.button if b.label == "Sign in"]
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _locked(at: AppTest) -> None:
    """The password form and nothing of any page."""
    assert [t.label for t in at.text_input] == ["Password"]
    assert [t.value for t in at.title] == ["H2A · Hand-to-Age"]
    for kind in ("metric", "dataframe", "plotly_chart", "image", "radio", "selectbox", "file_uploader",
                 "subheader", "info", "warning"):
        assert not at.get(kind), kind
    assert not at.sidebar.children or not any(True for _ in at.sidebar.get("radio"))


@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_page_asks_for_the_password_first(password_set, demo_dir, page: str) -> None:
    at = _app()
    at.run()
    _locked(at)
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    _locked(at)


def test_right_password_opens_the_page_asked_for(password_set, demo_dir) -> None:
    at = _app()
    at.run()
    at.switch_page("app_pages/population.py").run()
    _locked(at)
    _sign_in(at, PASSWORD)
    assert "Population statistics" in [t.value for t in at.title]
    assert {m.label for m in at.metric} >= {"Images"}
    assert not at.text_input or "Password" not in [t.label for t in at.text_input]


def test_wrong_password_is_refused_then_rate_limited(password_set, demo_dir, monkeypatch) -> None:
    from h2a.app import auth

    at = _app()
    at.run()
    for _ in range(3):
        _sign_in(at, "guess")
        assert [e.value for e in at.error] == ["Wrong password."]
        _locked(at)
    _sign_in(at, PASSWORD)  # the third failure started the back-off: even the right password waits
    assert any(e.value.startswith("Too many attempts") for e in at.error), [e.value for e in at.error]
    _locked(at)
    reload = _app()  # a new session from the same address (a reload) keeps the count
    reload.run()
    _sign_in(reload, PASSWORD)
    assert any(e.value.startswith("Too many attempts") for e in reload.error), [e.value for e in reload.error]
    real_keys = auth.client_keys
    monkeypatch.setattr(auth, "client_keys", lambda: ("addr:10.0.0.2", real_keys()[1]))
    other = _app()  # another client address is not held back by this one's failures
    other.run()
    _sign_in(other, PASSWORD)
    assert not [t for t in other.text_input if t.label == "Password"]
    assert "H2A · Hand-to-Age" in [t.value for t in other.title] and other.metric  # the home page


def test_malformed_hash_keeps_the_server_closed(monkeypatch, demo_dir) -> None:
    monkeypatch.setenv("H2A_PASSWORD_HASH", "plaintext-password")
    at = _app()
    at.run()
    assert any("misconfigured" in e.value for e in at.error)
    assert not at.text_input and not at.metric


# ---------------------------------------------------------------- allowed data folders

@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    shared, outside = tmp_path / "shared", tmp_path / "private"
    (shared / "rsna").mkdir(parents=True)
    (outside / "secret").mkdir(parents=True)
    return shared, outside


def test_folder_inside_a_root_is_allowed_and_resolved(roots) -> None:
    from h2a.server import check_data_path

    shared, _ = roots
    assert check_data_path(shared / "rsna", [shared]) == (shared / "rsna").resolve()
    assert check_data_path(shared, [shared]) == shared.resolve()
    assert check_data_path("rsna", [shared], base=shared) == (shared / "rsna").resolve()
    assert check_data_path(shared / "x" / ".." / "rsna", [shared]) == (shared / "rsna").resolve()


@pytest.mark.parametrize("how", ["symlink", "dotdot", "relative", "sibling-prefix", "absolute"])
def test_folder_outside_the_roots_is_refused(roots, how: str) -> None:
    from h2a.server import PathNotAllowed, check_data_path

    shared, outside = roots
    if how == "symlink":
        (shared / "link").symlink_to(outside / "secret", target_is_directory=True)
        path, base = shared / "link", None
    elif how == "dotdot":
        path, base = shared / "rsna" / ".." / ".." / "private" / "secret", None
    elif how == "relative":
        path, base = "../private/secret", shared
    elif how == "sibling-prefix":  # /x/shared-evil is not under /x/shared
        (shared.parent / "shared-evil").mkdir()
        path, base = shared.parent / "shared-evil", None
    else:
        path, base = outside / "secret", None
    with pytest.raises(PathNotAllowed, match="outside the folders this server shares"):
        check_data_path(path, [shared], base=base)


def test_default_roots_are_the_workspace_and_data_dir(monkeypatch, tmp_path) -> None:
    from h2a.settings import get_settings

    monkeypatch.delenv("H2A_DATA_ROOTS", raising=False)
    monkeypatch.setenv("H2A_DATA_DIR", str(tmp_path / "rsna"))
    s = get_settings()
    assert s.data_roots == (s.workspace, tmp_path / "rsna")
    monkeypatch.setenv("H2A_DATA_ROOTS", os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert get_settings().data_roots == (tmp_path / "a", tmp_path / "b")


def _custom_folder(at: AppTest, folder: str) -> AppTest:
    at.switch_page("app_pages/home.py").run()
    at.radio(key="dataset_choice").set_value("Another folder…").run()
    at.text_input(key="dataset_custom_path").set_value(folder).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_sidebar_refuses_a_folder_outside_the_roots(monkeypatch, demo_dir, tmp_path) -> None:
    import shutil

    outside = tmp_path / "elsewhere"
    shutil.copytree(demo_dir, outside, ignore=shutil.ignore_patterns("*.png", "*.jpg"))  # labels suffice
    at = _app()
    at.run()
    _custom_folder(at, str(outside))
    assert any("outside the folders this server shares" in e.value for e in at.sidebar.error), \
        [e.value for e in at.error]
    assert not at.metric  # nothing of that folder is shown
    link = demo_dir.parent / "escape-link"  # inside the workspace, pointing out of it
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    _custom_folder(at, str(link))
    assert any("outside the folders this server shares" in e.value for e in at.sidebar.error)
    _custom_folder(at, str(demo_dir))  # the demo lives in the workspace: allowed
    assert not at.sidebar.error and {m.label for m in at.metric} >= {"Images"}


# ---------------------------------------------------------------- predict page: heavy work in series

def test_predictions_from_many_sessions_run_one_at_a_time(monkeypatch) -> None:
    """Four sessions predicting at once: decode + model never run two at a time. A barrier
    for two lets two overlapping predictions meet; serialised, each one times out alone."""
    from h2a.app import predict_ui

    state = {"active": 0, "peak": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(2, timeout=1.0)

    class FakePredictor:
        def predict_image(self, data, **_):
            with lock:
                state["active"] += 1
                state["peak"] = max(state["peak"], state["active"])
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
            with lock:
                state["active"] -= 1
            return f"result {len(data)}"

    monkeypatch.setattr(predict_ui, "_predictor", lambda key, site="auto", backend="torch": FakePredictor())
    predict_ui._predict.clear()
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            data = bytes([i]) * (100 + i)
            predict_ui._predict((("run", i),), f"digest-{i}", "x.png", "male", None, None, 120.0, 1, data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    predict_ui._predict.clear()
    assert not errors, errors
    assert state["peak"] == 1


# ---------------------------------------------------------------- the commands

def test_hash_password_reads_stdin_and_prints_a_verifiable_line() -> None:
    from h2a.server import verify_password

    res = subprocess.run([sys.executable, "-m", "h2a", "hash-password"], input=PASSWORD + "\n", cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert verify_password(PASSWORD, line) and PASSWORD not in res.stdout + res.stderr
    empty = subprocess.run([sys.executable, "-m", "h2a", "hash-password"], input="\n", cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "empty" in empty.stderr


def test_serve_refuses_an_open_interface_without_a_password(monkeypatch) -> None:
    monkeypatch.delenv("H2A_PASSWORD_HASH", raising=False)
    res = run_cli("serve", "--host", "0.0.0.0", "--dry-run", env={"HOME": str(REPO / "no-such-home")})
    assert res.returncode == 2 and "without a password" in res.stderr
    res = run_cli("serve", "--dry-run", env={"H2A_PASSWORD_HASH": "nonsense"})
    assert res.returncode == 2 and "scrypt:N:r:p:SALT:HASH" in res.stderr


def test_serve_dry_run_names_the_interface_and_the_closed_defaults() -> None:
    from h2a.server import hash_password

    res = run_cli("serve", "--host", "0.0.0.0", "--port", "8765", "--dry-run",
                  env={"H2A_PASSWORD_HASH": hash_password(PASSWORD)})
    assert res.returncode == 0, res.stderr
    argv = res.stdout.split()
    assert argv[argv.index("--server.address") + 1] == "0.0.0.0"
    assert argv[argv.index("--server.port") + 1] == "8765"
    assert argv[argv.index("--client.showErrorDetails") + 1] == "none"
    assert "password required" in res.stderr


def test_serve_starts_the_app_on_the_chosen_interface(tmp_path) -> None:
    """One command: `h2a serve --host 127.0.0.1 --port N` answers on that address."""
    from h2a.server import hash_password
    from tests.browser import free_port

    port = free_port()
    env = dict(os.environ, H2A_PASSWORD_HASH=hash_password(PASSWORD))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "h2a", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        assert "password required" in (tmp_path / "serve.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
