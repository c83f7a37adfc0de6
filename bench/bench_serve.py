"""Load bench: N browser sessions upload to the predict page at the same moment.

Not a test: it prints figures. It starts ``h2a serve`` (the app as served: closed
defaults, 50 MB upload cap and the HTTP sign-in gate of ``serve_app.py``, through which
every upload and image of the sessions passes) on a throw-away workspace with the synthetic demo
dataset and a tiny bone-age run (tiny_cnn, trained for a few steps, or ``--model RUN``),
opens ``--sessions`` pages in Debian's Chromium (Playwright, the flags of the browser
tests), puts a different radiograph in each (real full-resolution RSNA images from
``../shared/data/rsna-fullres`` when present, else demo images), fills sex and age, then
clicks "Estimate bone age" in every session at once and waits for each answer.

Prints: per-session latency (click to bone age on screen) with median / p95 / max; the
server's resident memory before the clicks and its peak (``VmHWM`` of the server
process); and how many times the model was loaded (the app logs "model loaded" once per
load). With heavy work serialised the peak stays near one prediction's worth above the
baseline, and the model loads once.

    .venv/bin/python bench/bench_serve.py                  # 8 sessions
    .venv/bin/python bench/bench_serve.py --sessions 2     # a quick check

Waits first while ``/tmp/h2a-quiet`` exists (another job asked for a quiet machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULLRES = REPO.parent / "shared" / "data" / "rsna-fullres" / "boneage-training-dataset"
QUIET = Path("/tmp/h2a-quiet")
LOADED = re.compile(r"model loaded: ")
# Debian's Chromium with the flags of the browser tests (tests/browser.py); a bench is a
# script run on its own, so it does not import the test package.
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def wait_for_quiet(poll_s: float = 30.0) -> None:
    """Wait while another job holds /tmp/h2a-quiet."""
    while QUIET.exists():
        print(f"waiting: {QUIET} exists", file=sys.stderr, flush=True)
        time.sleep(poll_s)


def prepare(workspace: Path, model: str | None, steps_epochs: int) -> tuple[Path, Path]:
    """Demo dataset + a tiny finished run in ``workspace``; returns (demo dir, run dir)."""
    os.environ["H2A_WORKSPACE"] = str(workspace)
    os.environ["H2A_MODELS_DIR"] = str(workspace / "models")
    os.environ.setdefault("H2A_DEMO_N", "240")
    from h2a.data.demo import ensure_demo

    demo = ensure_demo()
    if model:
        return demo, Path(model)
    from h2a.data.preprocess import PreprocessConfig
    from h2a.engine.config import TrainConfig
    from h2a.engine.trainer import train
    from h2a.run import Run

    out = workspace / "models" / "bench-tiny"
    if Run.at(out).meta is None:
        cfg = TrainConfig(data=str(demo), out=str(out), arch="tiny_cnn", pretrained=False,
                          preprocess=PreprocessConfig(size=64).to_dict(), epochs=steps_epochs, batch_size=32,
                          lr=3e-3, workers=0, seed=0)
        train(cfg, log=lambda m: None)
    return demo, out


def pick_images(demo: Path, n: int) -> list[Path]:
    """``n`` different radiographs: real full-resolution ones when present."""
    if FULLRES.is_dir():
        real = sorted(p for p in FULLRES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if len(real) >= n:
            return real[:n]
    return sorted(demo.rglob("*.png"))[:n]


def _status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of ``pid`` in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class Server:
    """`h2a serve` of the app on a free loopback port, its log kept for counting loads."""

    def __init__(self, log_path: Path) -> None:
        with socket.socket() as s:  # a free loopback port
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "h2a", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"streamlit did not start; see {self.log_path}")

    def model_loads(self) -> int:
        self._log.flush()
        return len(LOADED.findall(self.log_path.read_text(errors="replace")))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


async def one_session(browser, url: str, image: Path, age: int, ready: asyncio.Barrier,
                      timeout_s: float, at_clicks: dict, server_pid: int) -> float:
    """Open the predict page, upload ``image``, fill sex and age; at the barrier click and
    time until the bone age is on screen."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        await page.goto(f"{url}/predict", timeout=timeout_s * 1000)
        await page.wait_for_selector('input[type="file"]', state="attached", timeout=timeout_s * 1000)
        await page.set_input_files('input[type="file"]', str(image))
        await page.get_by_text("Sex (required)").wait_for(timeout=timeout_s * 1000)
        await page.get_by_text("male", exact=True).click()
        age_box = page.get_by_label("…or age at exam (months)", exact=True)
        await age_box.fill(str(age))
        await age_box.press("Tab")
        if await ready.wait() == 0:  # every session ready: the memory before the clicks
            at_clicks.update(_status(server_pid))
        t0 = time.perf_counter()
        await page.get_by_role("button", name="Estimate bone age").click()
        await page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=timeout_s * 1000)
        latency = time.perf_counter() - t0
        if await page.locator('[data-testid="stException"]').count():
            raise RuntimeError(f"{image.name}: the page shows an error")
        return latency
    finally:
        await page.close()


async def drive(url: str, images: list[Path], timeout_s: float, at_clicks: dict, server_pid: int) -> list[float]:
    from playwright.async_api import async_playwright

    ready = asyncio.Barrier(len(images))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            return list(await asyncio.gather(*(one_session(browser, url, img, 60 + 12 * i, ready, timeout_s,
                                                           at_clicks, server_pid)
                                               for i, img in enumerate(images))))
        finally:
            await browser.close()


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (with 8 sessions: the slowest)."""
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--model", help="a finished bone-age run (default: train a tiny one)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the tiny run (its quality is irrelevant)")
    ap.add_argument("--workspace", help="workspace to use (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds each session may take")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()

    wait_for_quiet()
    with tempfile.TemporaryDirectory(prefix="h2a-bench-serve-") as tmp:
        ws = Path(args.workspace) if args.workspace else Path(tmp)
        t = time.perf_counter()
        demo, run = prepare(ws, args.model, args.epochs)
        os.environ["H2A_MODELS_DIR"] = str(run.parent)
        images = pick_images(demo, args.sessions)
        print(f"setup: demo + run {run.name} in {time.perf_counter() - t:.0f} s; {len(images)} images "
              f"({'RSNA full resolution' if FULLRES in images[0].parents else 'synthetic demo'}, "
              f"{statistics.median(p.stat().st_size for p in images) / 1e3:.0f} kB median)", flush=True)
        server = Server(ws / "bench-serve.log")
        try:
            server.wait_healthy()
            idle = _status(server.proc.pid)
            base: dict = {}
            latencies = asyncio.run(drive(server.url, images, args.timeout, base, server.proc.pid))
            after = _status(server.proc.pid)
            loads = server.model_loads()
        finally:
            server.close()
    figures = {
        "sessions": len(latencies),
        "latency_s": [round(x, 2) for x in latencies],
        "median_s": round(statistics.median(latencies), 2),
        "p95_s": round(p95(latencies), 2),
        "max_s": round(max(latencies), 2),
        "server_rss_idle_mib": round(idle["VmRSS"] / 1024),
        "server_rss_before_clicks_mib": round(base["VmRSS"] / 1024),
        "server_peak_before_clicks_mib": round(base["VmHWM"] / 1024),
        "server_peak_rss_mib": round(after["VmHWM"] / 1024),
        "server_rss_after_mib": round(after["VmRSS"] / 1024),
        "model_loads": loads,
        "predict_slots": int(os.environ.get("H2A_PREDICT_SLOTS", "1") or 1),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"{figures['sessions']} simultaneous sessions: latency median {figures['median_s']} s, "
          f"p95 {figures['p95_s']} s, max {figures['max_s']} s")
    print(f"server RSS: {figures['server_rss_idle_mib']} MiB idle, {figures['server_rss_before_clicks_mib']} MiB "
          f"before the clicks (pages open, files uploaded; peak so far {figures['server_peak_before_clicks_mib']} "
          f"MiB), peak {figures['server_peak_rss_mib']} MiB (VmHWM), {figures['server_rss_after_mib']} MiB after")
    print(f"model loaded {loads} time(s) (log lines 'model loaded')")
    print(f"machine: {figures['cpus']} CPUs, 1-min load average {figures['load_avg_1m']}")
    if args.json:
        print(json.dumps(figures))
    return 0 if loads == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
