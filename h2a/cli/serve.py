"""``h2a serve`` and ``h2a hash-password``: one command starts the app for a team.

``serve`` runs ``streamlit run serve_app.py`` (the app behind the HTTP gate that refuses
uploads, media and metrics before the password; docs/serving.md) with the closed
defaults spelled out on the command line (so they hold whatever the working directory's
config says): the chosen interface only, no tracebacks in the browser, a 50 MB upload
cap, the agent API off. It refuses to listen beyond this machine without a password
unless told to, and refuses a hash whose scrypt cost exceeds the ceiling. It exports
``H2A_DATA_ROOTS`` so every scan the server starts (page or background job) keeps to the
same roots. ``hash-password`` turns a password typed at a prompt (or one line on stdin)
into the ``H2A_PASSWORD_HASH`` line, refusing short or blank passwords.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
import tomllib
from pathlib import Path

from h2a.cli.common import CliError
from h2a.server import PasswordHashError, hash_password, parse_password_hash
from h2a.settings import REPO_ROOT, get_settings

APP = REPO_ROOT / "serve_app.py"  # st.App around streamlit_app.py with h2a.app.http_gate
DEFAULT_HOST, DEFAULT_PORT = "localhost", 8501
# Largest upload, MB. A radiograph is 1-30 MB (a 16-bit DICOM of a 3000 px hand is ~18 MB);
# Streamlit's default 200 MB let one signed-in tab hold 200 MB per file in memory for
# nothing. Applied by `serve`; .streamlit/config.toml says the same for `streamlit run`.
MAX_UPLOAD_MB = 50


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the app (localhost unless --host; asks for a password when "
                                     "H2A_PASSWORD_HASH is set)")
    p.add_argument("--host", default=DEFAULT_HOST, metavar="ADDR",
                   help="interface to listen on, e.g. 0.0.0.0 for every one (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N", help="port (default: %(default)s)")
    p.add_argument("--allow-no-password", action="store_true",
                   help="serve beyond this machine without a password (not recommended)")
    p.add_argument("--dry-run", action="store_true", help="print the streamlit command instead of running it")
    p.set_defaults(func=cmd_serve)
    h = sub.add_parser("hash-password", help="print the H2A_PASSWORD_HASH line for a password "
                                             "(typed at a prompt, or one line on stdin)")
    h.set_defaults(func=cmd_hash_password)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secrets_password_hash() -> str | None:
    """``password_hash`` from the secrets.toml files Streamlit reads for this app, if any."""
    for path in (REPO_ROOT / ".streamlit" / "secrets.toml", Path.home() / ".streamlit" / "secrets.toml"):
        try:
            value = tomllib.loads(path.read_text(encoding="utf-8")).get("password_hash")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise CliError(f"{path} cannot be read: {exc}") from exc
        if value:
            return str(value).strip()
    return None


def configured_hash() -> str | None:
    """The hash the app will ask for (environment first, then secrets.toml), checked."""
    line = get_settings().password_hash or secrets_password_hash()
    if line is not None:
        try:
            parse_password_hash(line)
        except PasswordHashError as exc:
            raise CliError(f"H2A_PASSWORD_HASH: {exc}") from exc
    return line


def streamlit_argv(host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line with the closed defaults explicit."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--client.showErrorDetails", "none", "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--server.enableAgentApi", "false",
            "--server.enableStaticServing", "false"]


def has_app_middleware() -> bool:
    """True when this Streamlit has ``st.App`` (the gate is its middleware). Looks at the
    installed files instead of importing streamlit (a second of start-up for --dry-run)."""
    import importlib.util

    spec = importlib.util.find_spec("streamlit")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        source = Path(folder) / "web" / "server" / "starlette" / "starlette_app.py"
        if source.is_file() and "\nclass App" in source.read_text(encoding="utf-8", errors="replace"):
            return True
    return False


def export_data_roots() -> str:
    """Put the roots in the environment the server (and every job it starts) inherits."""
    roots = os.pathsep.join(str(r.expanduser().resolve()) for r in get_settings().data_roots)
    os.environ["H2A_DATA_ROOTS"] = roots
    return roots


def cmd_serve(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise CliError(f"--port must be 1-65535, got {args.port}")
    if not APP.exists():
        raise CliError(f"{APP} not found: run h2a serve from a checkout (pip install -e .)")
    if not has_app_middleware():
        raise CliError("this Streamlit has no st.App, which the sign-in gate needs: "
                       "pip install -U streamlit (1.67 is tested)")
    protected = configured_hash() is not None
    if not protected and not is_loopback(args.host) and not args.allow_no_password:
        raise CliError(f"refusing to serve on {args.host} without a password: set H2A_PASSWORD_HASH "
                       "(h2a hash-password makes it), or pass --allow-no-password")
    argv = streamlit_argv(args.host, args.port)
    export_data_roots()
    print(f"h2a serve: http://{args.host}:{args.port} "
          f"({'password required' if protected else 'no password'}); Ctrl-C stops it", file=sys.stderr)
    if args.dry_run:
        print(" ".join(argv))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(REPO_ROOT)  # Streamlit reads .streamlit/config.toml from the working directory
    os.execv(sys.executable, argv)  # the server replaces this process: signals reach it directly
    return 0  # pragma: no cover


def read_password() -> str:
    """From a prompt (asked twice) on a terminal; else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password for H2A: ")
        if getpass.getpass("Again: ") != first:
            raise CliError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_hash_password(args: argparse.Namespace) -> int:
    try:
        line = hash_password(read_password())
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(line)
    print("Set it where the server starts, e.g.: export H2A_PASSWORD_HASH='<the line above>'", file=sys.stderr)
    return 0
