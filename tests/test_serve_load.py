"""8 browser sessions upload to the predict page at once: every one answers, the model loads once.

Runs ``bench/bench_serve.py`` (the served app, closed defaults, Debian Chromium) on the
tiny run; the bench prints p95 latency and peak memory, which this test does not judge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_eight_simultaneous_predict_sessions_all_answer_and_share_one_model(tiny_run: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_serve.py"), "--sessions", "8", "--model",
                           str(tiny_run), "--workspace", str(tmp_path), "--timeout", "500", "--json"],
                          capture_output=True, text=True, timeout=840, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["sessions"] == 8 and len(figures["latency_s"]) == 8
    assert figures["model_loads"] == 1
    assert figures["server_peak_rss_mib"] >= figures["server_rss_idle_mib"] > 0
