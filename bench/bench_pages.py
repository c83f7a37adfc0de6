"""Page render times at the size users bring, against the targets of issue 18.

Targets (on this machine, once the dataset's headers are scanned):
  * first visit: a page's first render in a new browser session is at most 5 s;
  * revisit: coming back to a page in the same session is at most 2 s.

What it does: scans the headers (``h2a stats --data DIR``), starts ``streamlit run
streamlit_app.py`` on the dataset (``H2A_DATA_DIR``, a fresh workspace unless
``--workspace``), then in Debian's Chromium:
  1. *cold*: every page in its own new browser context, in menu order: the first
     session to open the page since the server started (process caches empty);
  2. *new session*: every page again in a new context (a second user: shared caches warm);
  3. *revisit*: in that second session, the Home page and back through the menu.
A page is "rendered" when ``tests.browser.READY_JS`` says so: its title is shown, the
script run has ended (no spinner or "Running..." status), no element is still a loading
skeleton and every image has loaded. It prints one table and exits 1 when a page misses a
target (``--no-fail``: always 0).

    python -m bench.bench_pages                     # builds /tmp/h2a-scale (12,611 images) first
    python -m bench.bench_pages --data DIR --pages population preprocessing

Run it as a module from the repository root: it imports the tests' browser plumbing
(``tests.browser``: one Streamlit launch and one set of Chromium flags).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST_VISIT_S = 5.0
REVISIT_S = 2.0
DEFAULT_DATA = Path("/tmp/h2a-scale")
SCALE_N = 12611

from tests.browser import READY_JS, chromium, streamlit_server


def ensure_data(data: Path | None) -> Path:
    """The dataset to measure: ``--data``, or the scale dataset built once by its script."""
    if data is not None:
        return data
    if not any(DEFAULT_DATA.glob("*.csv")):
        script = REPO / "bench" / "make_scale_dataset.py"
        if not script.exists():
            sys.exit(f"{script} is missing: pass --data DIR (a dataset in the RSNA layout)")
        subprocess.run([sys.executable, str(script), "--n", str(SCALE_N), "--out", str(DEFAULT_DATA)],
                       check=True, cwd=REPO)
    return DEFAULT_DATA


def scan_headers(data: Path, env: dict) -> float:
    """``h2a stats`` once, so the page measures rendering, not the first header scan."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "h2a", "stats", "--data", str(data), "--json"], check=True,
                   cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads): the server's work for
    a page, which a busy machine stretches in wall-clock time but not in CPU time."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Timer:
    """Wall-clock seconds and the server's CPU seconds of one render."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds(self.pid)
        return self

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, cpu_seconds(self.pid) - self.cpu

    def __exit__(self, *exc) -> None:
        return None


def wait_ready(page, expected: str | None, timeout_s: float) -> str:
    """Block until the page has rendered; returns its title."""
    page.wait_for_function(READY_JS, arg=expected, timeout=timeout_s * 1000, polling=100)
    return page.locator('[data-testid="stMain"] h1').first.inner_text().strip()


Measure = tuple[float, float] | None  # (wall s, server CPU s), None on a timeout


def timed_goto(context, url: str, pid: int, timeout_s: float) -> tuple[object, Measure, str | None]:
    """Open ``url`` in a new tab of ``context``: (page, measure, title)."""
    page = context.new_page()
    with Timer(pid) as timer:
        page.goto(url)
        try:
            title = wait_ready(page, None, timeout_s)
        except Exception:  # noqa: BLE001 - a timeout is a result, not a crash of the bench
            return page, None, None
        return page, timer.stop(), title


def timed_click(page, path: str, expected: str, pid: int, timeout_s: float) -> Measure:
    """Follow the menu link to ``path`` (same session) and time the render."""
    link = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').first
    with Timer(pid) as timer:
        link.click()
        try:
            wait_ready(page, expected, timeout_s)
        except Exception:  # noqa: BLE001
            return None
        return timer.stop()


def menu_paths(browser, base: str, pid: int, timeout_s: float) -> tuple[list[str], Measure]:
    """Page paths in menu order (Home is ''), read from the sidebar of a throw-away session:
    the server's first request, which loads the dataset (and imports the app)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page, measure, _ = timed_goto(context, base + "/", pid, timeout_s)
    hrefs = page.eval_on_selector_all('[data-testid="stSidebarNav"] a', "els => els.map(e => e.href)")
    context.close()
    return [h[len(base):].strip("/") for h in hrefs], measure


def fmt(measure: Measure, target: float) -> str:
    """'wall (cpu)' with a '!' when the wall-clock time misses the target."""
    if measure is None:
        return "timeout"
    wall, cpu = measure
    return f"{wall:5.1f} ({cpu:4.1f}){'' if wall <= target else '!'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help=f"dataset folder (default: build {DEFAULT_DATA} with "
                                                "bench/make_scale_dataset.py)")
    ap.add_argument("--workspace", type=Path, help="H2A workspace (default: a fresh temporary one, so "
                                                   "no thumbnail or result is cached from before)")
    ap.add_argument("--pages", nargs="*", help="page paths to measure (default: every page in the menu; "
                                               "'home' for the Home page)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a page counts as timed out")
    ap.add_argument("--no-fail", action="store_true", help="exit 0 even when a page misses a target")
    ap.add_argument("--log", type=Path, help="the server's log (default: in the workspace)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the server

    data = ensure_data(args.data).resolve()
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="h2a-bench-pages-"))
    env = dict(os.environ, H2A_DATA_DIR=str(data), H2A_WORKSPACE=str(workspace))
    env.setdefault("H2A_MODELS_DIR", str(REPO / "models"))  # the runs the model pages show
    scan_s = scan_headers(data, env)
    load0 = os.getloadavg()
    log_path = args.log or workspace / "bench-pages-server.log"
    rows: list[tuple[str, Measure, Measure, Measure]] = []
    first_request: Measure = None
    try:
        with streamlit_server(log_path, env) as (base, server), chromium() as browser:
            paths, first_request = menu_paths(browser, base, server.pid, args.timeout)
            print(f"  server's first request (home, loads the dataset): {fmt(first_request, 1e9)}", flush=True)
            wanted = [("" if p == "home" else p) for p in (args.pages or paths)]
            titles: dict[str, str | None] = {}
            cold: dict[str, Measure] = {}
            for path in wanted:  # 1. cold: the first session to open each page
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                _, cold[path], titles[path] = timed_goto(context, f"{base}/{path}", server.pid, args.timeout)
                context.close()
                print(f"  cold {path or 'home'}: {fmt(cold[path], FIRST_VISIT_S)}", flush=True)
            for path in wanted:  # 2. a new session, then 3. away to another page and back
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page, warm, title = timed_goto(context, f"{base}/{path}", server.pid, args.timeout)
                title = title or titles[path]
                back = None
                if title is not None:
                    away = "" if path else ("predict" if "predict" in paths else paths[1])
                    timed_click(page, away, titles.get(away) or _title_of(browser, base, away), server.pid,
                                args.timeout)
                    back = timed_click(page, path, title, server.pid, args.timeout)
                context.close()
                rows.append((path or "home", cold[path], warm, back))
                print(f"  warm {path or 'home'}: {fmt(warm, FIRST_VISIT_S)} revisit {fmt(back, REVISIT_S)}",
                      flush=True)
    finally:
        if args.workspace is None:
            shutil.rmtree(workspace, ignore_errors=True)
    return report(data, scan_s, load0, first_request, rows, args.no_fail)


def _title_of(browser, base: str, path: str) -> str:
    """A page's title when the run did not visit it (e.g. ``--pages`` without Home)."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/{path}")
    title = wait_ready(page, None, 300)
    context.close()
    return title


def report(data: Path, scan_s: float, load0: tuple, first_request: Measure, rows: list, no_fail: bool) -> int:
    """Print the table; the exit status says whether every page met both targets."""
    images = data / "boneage-training-dataset"
    n_images = sum(1 for _ in images.iterdir()) if images.is_dir() else "?"
    load1 = os.getloadavg()
    print()
    print(f"dataset {data} ({n_images} images); header scan (h2a stats) {scan_s:.1f} s; "
          f"server's first request (loads the dataset) {fmt(first_request, 1e9)}")
    print(f"load average {load0[0]:.2f} before, {load1[0]:.2f} after, {os.cpu_count()} cores, nice {os.nice(0)}")
    print(f"targets: first visit <= {FIRST_VISIT_S:.0f} s (cold server and new session), "
          f"revisit <= {REVISIT_S:.0f} s; figures are wall s (server CPU s)")
    print(f"{'page':<16}{'first (cold)':>16}{'new session':>16}{'revisit':>16}")
    missed = []
    for path, cold, warm, back in rows:
        print(f"{path:<16}{fmt(cold, FIRST_VISIT_S):>16}{fmt(warm, FIRST_VISIT_S):>16}{fmt(back, REVISIT_S):>16}")
        for measure, target in ((cold, FIRST_VISIT_S), (warm, FIRST_VISIT_S), (back, REVISIT_S)):
            if measure is None or measure[0] > target:
                missed.append(path)
                break
    print("all pages within the targets" if not missed else f"missed: {', '.join(missed)}")
    return 0 if no_fail or not missed else 1


if __name__ == "__main__":
    sys.exit(main())
