"""Issue 30: the served app against a hostile team member.

A real ``h2a serve`` (password set, loopback port, the demo dataset) driven by
``tests.st_client``: Streamlit's own HTTP and websocket protocol from Python, so a test
plays an attacker and a user at once, at different client addresses (``X-Forwarded-For``,
which uvicorn trusts from this machine only, as from a local reverse proxy), without a
browser. Covered: nothing (upload, media, metrics) before the password, and a refused
upload costs no memory; media only for the sessions showing it; a password flood slows
the attacker and never stops the user; symbolic links out of the roots, loops, dangling
links and FIFOs are problem rows; weak passwords and costly scrypt hashes are refused.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.st_client import Client

PASSWORD = "correct horse battery staple"
SMALL_PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 200


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _settled_rss_mib(pid: int, timeout: float = 240) -> float:
    """The server's memory once it stops growing (the first session's page and the
    background import of PyTorch take a while on a busy machine)."""
    readings = [_rss_mib(pid)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        readings.append(_rss_mib(pid))
        if len(readings) >= 4 and max(readings[-4:]) - min(readings[-4:]) < 3:
            break
    return readings[-1]


@pytest.fixture(scope="module")
def served(workspace, demo_dir, tmp_path_factory):
    """``h2a serve --host 127.0.0.1`` with a password: (base URL, server pid). Each test
    uses its own range of client addresses, so the limiter's records do not mix."""
    from h2a.server import hash_password
    from tests.browser import free_port

    port = free_port()
    log_path = tmp_path_factory.mktemp("hostile") / "serve.log"
    env = dict(os.environ, H2A_PASSWORD_HASH=hash_password(PASSWORD))
    env.pop("H2A_DATA_ROOTS", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "h2a", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 240
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.5)
            yield url, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def _signed_in(url: str, address: str) -> tuple[Client, list[str]]:
    """A browser at ``address`` that signed in; the home page's media URLs."""
    user = Client(url, forwarded_for=address)
    user.connect()
    run = user.sign_in(PASSWORD)
    assert not run.errors() and user.session_id, run.errors()
    return user, run.media_urls()


# ---------------------------------------------------------------- nothing before the password

def test_a_locked_session_cannot_upload_and_the_attempt_costs_no_memory(served) -> None:
    url, pid = served
    user, _ = _signed_in(url, "10.30.1.2")  # the server has served a page: what it holds at rest
    locked = Client(url, forwarded_for="10.30.1.1")
    locked.connect()
    assert locked.form is not None  # the password form is all it has
    status, body = locked.upload(SMALL_PNG)
    assert status == 403 and b"Sign in first" in body
    idle = _settled_rss_mib(pid)
    blob = os.urandom(45 * 2**20)  # under the 50 MB cap: only the gate stops it
    for _ in range(4):
        try:
            status, _ = locked.upload(blob)
            assert status == 403
        except OSError:  # refused before the body was read: the server closed the connection
            pass
    assert _rss_mib(pid) - idle < 50, (idle, _rss_mib(pid))  # 180 MB sent, none of it kept
    assert locked.upload(SMALL_PNG, session_id=user.session_id)[0] == 403  # not into someone else's session
    assert Client(url).upload(SMALL_PNG, session_id=user.session_id)[0] == 403  # nor from a stranger
    assert user.upload(SMALL_PNG)[0] == 204  # a signed-in session keeps its uploads
    locked.sign_in(PASSWORD)
    assert locked.upload(SMALL_PNG)[0] == 204  # and so does the locked one once it signs in
    for c in (locked, user):
        c.close()


def test_media_answers_only_the_sessions_that_show_it(served) -> None:
    url, _ = served
    user, media = _signed_in(url, "10.30.2.1")
    assert media, "the home page shows thumbnails"
    first = media[0]
    assert user.get(first)[0] == 200
    assert user.get(first, cookies=False)[0] == 403  # the URL alone is not enough
    assert Client(url).get(first)[0] == 403  # a stranger's browser
    locked = Client(url, forwarded_for="10.30.2.2")
    locked.connect()
    assert locked.get(first)[0] == 403  # a browser with a locked session
    assert locked.get("/media/" + "0" * 56 + ".png")[0] == 403  # refused, not "not found": ids are not probed
    other, other_media = _signed_in(url, "10.30.2.3")
    assert first in other_media and other.get(first)[0] == 200  # the same picture on its own page
    population = other.goto("population")
    assert first not in population.media_urls()
    assert other.get(first)[0] == 403  # signed in, but its session no longer shows that file
    user.close()
    deadline = time.monotonic() + 30
    while user.get(first)[0] != 403:  # the session has ended: its URLs stop answering
        assert time.monotonic() < deadline, "media still served after the session closed"
        time.sleep(0.2)
    for c in (locked, other):
        c.close()


def test_a_real_browser_signs_in_and_its_images_load_through_the_gate(served) -> None:
    """Chromium sends the gate's cookie with the websocket and every image request."""
    from tests.browser import CHROMIUM, chromium, wait_idle

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (bash scripts/setup.sh --browser)")
    url, _ = served
    with chromium() as browser:
        page = browser.new_page(extra_http_headers={"X-Forwarded-For": "10.30.7.1"})
        page.goto(url)
        page.wait_for_selector("input[type=password]", timeout=240_000)
        page.fill("input[type=password]", PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        wait_idle(page)
        sizes = page.evaluate("Array.from(document.images).filter(i => i.src.includes('/media/'))"
                              ".map(i => i.naturalWidth)")
        assert sizes and all(w > 0 for w in sizes), sizes
        [cookie] = [c for c in page.context.cookies() if c["name"] == "h2a_client"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_metrics_need_a_signed_in_session(served) -> None:
    url, _ = served
    assert Client(url).get("/_stcore/metrics")[0] == 403
    locked = Client(url, forwarded_for="10.30.3.1")
    locked.connect()
    assert locked.get("/_stcore/metrics")[0] == 403
    locked.sign_in(PASSWORD)
    status, body = locked.get("/_stcore/metrics")
    assert status == 200 and body
    locked.close()


# ---------------------------------------------------------------- throttling without lock-out

def test_a_password_flood_slows_the_attacker_and_never_stops_the_user(served) -> None:
    """One address guessing fast (with reloads) gets 3 checked guesses, then waits 30 s,
    60 s, ...: at most 4 a minute. Then a flood from 22 addresses: the failing addresses'
    further guesses are paced (one check a second among them), and a user at a clean
    address signs in at the first try throughout."""
    url, _ = served
    attacker = Client(url, forwarded_for="10.30.4.1")
    attacker.connect()
    outcomes = []
    for i in range(12):
        if i % 4 == 3:
            attacker.connect()  # a reload: a new session, the same address
        outcomes.append(attacker.sign_in(f"guess {i}").errors())
    checked = [o for o in outcomes if o == ["Wrong password."]]
    refused = [o for o in outcomes if o and o[0].startswith("Too many attempts")]
    assert len(checked) == 3 and len(refused) == 9, outcomes
    user = Client(url, forwarded_for="10.30.4.2")
    user.connect()
    assert not user.sign_in(PASSWORD).errors()  # during the attack

    bots = [Client(url, forwarded_for=f"10.30.5.{i}") for i in range(22)]
    for bot in bots:
        bot.connect()
        assert bot.sign_in("bot guess").errors() == ["Wrong password."]  # a fresh address: checked
    t0 = time.monotonic()
    again = [bot.sign_in("bot guess 2").errors() for bot in bots[:3]]
    assert all(e == ["Wrong password."] for e in again), again
    assert time.monotonic() - t0 >= 1.9  # three paced checks: at least 2 s apart in all
    late = Client(url, forwarded_for="10.30.6.1")
    late.connect()
    assert not late.sign_in(PASSWORD).errors()  # the flood never refuses a clean address
    for c in [attacker, user, late, *bots]:
        c.close()


# ---------------------------------------------------------------- data roots

def _dataset(folder: Path, ids: list[str]) -> Path:
    images = folder / "boneage-training-dataset"
    images.mkdir(parents=True)
    rows = "".join(f"{i},{12 * (n + 1)},True\n" for n, i in enumerate(ids))
    (folder / "boneage-training-dataset.csv").write_text("id,boneage,male\n" + rows)
    return images


def _png(path: Path) -> None:
    from PIL import Image

    Image.new("L", (16, 16), 128).save(path)


@pytest.fixture
def hostile_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset inside the shared root whose files link out of it, to themselves, to
    nothing and to a FIFO; returns (root, dataset folder)."""
    root, private = tmp_path / "shared", tmp_path / "private"
    private.mkdir()
    images = _dataset(root / "ds", ["1", "2", "90004", "90005", "6"])
    _png(images / "1.png")
    _png(private / "secret.png")
    (images / "2.png").symlink_to(private / "secret.png")  # out of the root
    (images / "90004.png").symlink_to("90004.png")  # a loop
    (images / "90005.png").symlink_to("nothing.png")  # dangling
    os.mkfifo(private / "pipe")
    (images / "6.png").symlink_to(private / "pipe")  # out of the root, to a FIFO
    (private / "labels.csv").write_text("id,boneage,male\n1,10,True\n")
    (root / "ds" / "extra-validation.csv").symlink_to(private / "labels.csv")  # a label CSV out of the root
    (root / "ds" / "more").symlink_to(private, target_is_directory=True)  # a folder out of the root
    return root, root / "ds"


def test_links_out_of_the_roots_loops_and_dangling_links_are_problem_rows(hostile_folder) -> None:
    from h2a.data.datasets import load_dataset

    root, folder = hostile_folder
    ds = load_dataset(folder, roots=[root])
    problems = {p.item: p.problem for p in ds.problems}
    out = "links outside the folders this server shares"
    assert out in problems["boneage-training-dataset/2.png"]
    assert out in problems["boneage-training-dataset/6.png"]  # never opened: it is a FIFO out there
    assert out in problems["extra-validation.csv"]
    assert out in problems["more"] and out in problems["more/labels.csv"]  # not walked, not read
    assert "loop" in problems["boneage-training-dataset/90004.png"]
    assert "link to nothing" in problems["boneage-training-dataset/90005.png"]
    paths = dict(zip(ds.meta["id"], ds.meta["path"]))
    assert paths["1"] and all(paths[i] is None for i in ("2", "6", "90004", "90005"))
    assert set(ds.sources) == {"boneage-training-dataset.csv"}
    plain = load_dataset(folder, roots=None)  # plain CLI use: links are followed, loops still rows
    assert dict(zip(plain.meta["id"], plain.meta["path"]))["2"] is not None
    assert "loop" in {p.item: p.problem for p in plain.problems}["boneage-training-dataset/90004.png"]


def test_h2a_stats_reports_a_loop_instead_of_crashing_and_keeps_to_the_roots(hostile_folder) -> None:
    root, folder = hostile_folder
    res = run_cli("stats", "--data", str(folder), "--json", env={"H2A_DATA_ROOTS": str(root)}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    problems = {p["item"]: p["problem"] for p in json.loads(res.stdout)["problems"]}
    assert "loop" in problems["boneage-training-dataset/90004.png"]
    assert "outside the folders" in problems["boneage-training-dataset/2.png"]
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- passwords

WEAK = [("   ", "only whitespace"), ("short", "shorter than 8"), ("1234567", "shorter than 8"),
        ("        \t", "only whitespace"), ("", "empty")]


def test_weak_passwords_are_refused_with_the_reason() -> None:
    from h2a.server import hash_password, password_problem

    for password, why in WEAK:
        with pytest.raises(ValueError, match=why):
            hash_password(password)
    assert password_problem("12345678") is None and password_problem(" a b c d ") is None


def test_hash_password_refuses_three_spaces_in_one_line() -> None:
    res = subprocess.run([sys.executable, "-m", "h2a", "hash-password"], input="   \n", cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and not res.stdout and len(lines) == 1, res.stderr
    assert "only whitespace" in lines[0]


def _hash_line(n: int, r: int, p: int) -> str:
    b64 = lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")  # noqa: E731
    return f"scrypt:{n}:{r}:{p}:{b64(b'saltsaltsaltsalt')}:{b64(bytes(32))}"


def test_costly_scrypt_parameters_are_refused() -> None:
    """N, r, p each over the ceiling, and 2**17 / 16 / 4: each within it, 32x too much work."""
    from h2a.server import PasswordHashError, hash_password, parse_password_hash

    for n, r, p in [(2**18, 8, 1), (2**20, 8, 1), (2**14, 32, 1), (2**14, 8, 16), (2**17, 16, 4)]:
        with pytest.raises(PasswordHashError, match="exceed the ceiling"):
            parse_password_hash(_hash_line(n, r, p))
    assert parse_password_hash(hash_password(PASSWORD)).n == 2**14  # the default is well inside
    assert parse_password_hash(_hash_line(2**17, 16, 1)).r == 16  # 256 MiB: the most allowed


def test_serve_refuses_a_costly_hash_at_start_up_in_one_line() -> None:
    res = run_cli("serve", "--dry-run", env={"H2A_PASSWORD_HASH": _hash_line(2**20, 8, 1)})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "exceed the ceiling" in lines[0] and "N=1048576" in lines[0]
