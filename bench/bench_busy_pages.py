"""Page revisits while another session's evaluation runs in the same server.

Why: an evaluation (the Evaluation and Sex pages compute one in a background thread of the
server) is minutes of PyTorch on the same 2 cores as every page. The worker runs niced
(``h2a.processes.lower_priority``) so the pages users are looking at come first; this bench
measures what a second user sees.

What it does: starts ``streamlit run`` on the dataset with a fresh workspace, and in one
browser session times revisits of Preprocessing and Training (away to Home and back through
the menu) on a quiet server; then a second session opens the Evaluation page and asks for the
evaluation on every labelled image of the dataset (14,036 on the scale dataset: it runs for
the rest of the bench), and the first session times the same revisits again. It prints the
median of each and the ratio busy / quiet (the baseline is the same run's quiet figures).

    python -m bench.bench_busy_pages --data /tmp/h2a-scale     # from the repository root
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_pages import REPO, REVISIT_S, cpu_seconds, ensure_data, scan_headers, timed_click, timed_goto, wait_ready
from tests.browser import chromium, streamlit_server

PAGES = ("preprocessing", "training")
VIEWPORT = {"width": 1400, "height": 1000}


def revisits(page, titles: dict[str, str], pid: int, rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each page's revisit (Home, then the page through the menu), ``rounds`` times."""
    out: dict[str, list[float]] = {p: [] for p in PAGES}
    for _ in range(rounds):
        for path in PAGES:
            timed_click(page, "", titles[""], pid, 60)
            measure = timed_click(page, path, titles[path], pid, 60)
            out[path].append(measure[0] if measure else float("inf"))
    return out


def evaluating_line(page) -> str:
    lines = page.locator('[data-testid="stMain"]').inner_text().splitlines()
    return next((line for line in lines if line.startswith("Evaluating")), "")


def until(check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="dataset folder (default: the scale dataset of bench_pages)")
    ap.add_argument("--rounds", type=int, default=4, help="revisits of each page, quiet and busy")
    args = ap.parse_args(argv)
    data = ensure_data(args.data).resolve()
    workspace = Path(tempfile.mkdtemp(prefix="h2a-bench-busy-"))  # fresh: no stored evaluation
    env = dict(os.environ, H2A_DATA_DIR=str(data), H2A_WORKSPACE=str(workspace))
    env.setdefault("H2A_MODELS_DIR", str(REPO / "models"))
    scan_headers(data, env)
    with streamlit_server(workspace / "server.log", env) as (base, server), chromium() as browser:
        user = browser.new_context(viewport=VIEWPORT)
        page, _, _ = timed_goto(user, f"{base}/", server.pid, 120)
        titles = {"": wait_ready(page, None, 120)}
        for path in PAGES:  # a first visit each, so the revisits below are revisits
            page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').first.click()
            titles[path] = wait_ready(page, None, 120)
        quiet = revisits(page, titles, server.pid, args.rounds)

        other = browser.new_context(viewport=VIEWPORT).new_page()
        other.goto(f"{base}/evaluation")
        wait_ready(other, None, 120)
        until(lambda: not evaluating_line(other), 300)  # the page's default evaluation (one split) first
        other.get_by_text("all labelled images of").first.click()
        until(lambda: ":" in evaluating_line(other), 90)  # past start-up: a stage and a count are shown
        started = evaluating_line(other)
        if not started:
            print("the second session's evaluation did not start (is there a run in models/?)")
            return 1
        t0, cpu0 = time.monotonic(), cpu_seconds(server.pid)
        busy = revisits(page, titles, server.pid, args.rounds)
        wall, cpu = time.monotonic() - t0, cpu_seconds(server.pid) - cpu0
        print(f"second session: {started} ... {evaluating_line(other) or 'finished'}")
        print(f"while busy: the server used {cpu:.1f} CPU s in {wall:.1f} s; load average {os.getloadavg()[0]:.1f}")

    print(f"dataset {data}; {args.rounds} revisits each; target <= {REVISIT_S:.0f} s; median wall s")
    print(f"{'page':<16}{'quiet':>8}{'busy':>8}{'busy/quiet':>12}   busy runs")
    for path in PAGES:
        q, b = statistics.median(quiet[path]), statistics.median(busy[path])
        print(f"{path:<16}{q:8.2f}{b:8.2f}{b / q:11.2f}x   {' '.join(f'{x:.2f}' for x in busy[path])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
