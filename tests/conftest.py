"""Shared fixtures: an isolated workspace, a small synthetic dataset, the real RSNA samples."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
THUMBS = SHARED_DATA / "rsna-thumbs-100"
FULLRES = SHARED_DATA / "rsna-fullres"
LABELS = SHARED_DATA / "rsna-labels"


@pytest.fixture(scope="session", autouse=True)
def workspace(tmp_path_factory) -> Path:
    """Every test writes into a throw-away workspace, never into the repo's folders."""
    ws = tmp_path_factory.mktemp("h2a-workspace")
    os.environ["H2A_WORKSPACE"] = str(ws)
    os.environ["H2A_MODELS_DIR"] = str(ws / "models")
    # the shipped models (models/ of the repo) only where a test asks for them
    # (tests/test_shipped.py), so every other test sees just the runs it trained
    os.environ["H2A_SHIPPED_DIR"] = "off"
    os.environ.setdefault("H2A_DEMO_N", "240")
    os.environ.pop("H2A_DATA_DIR", None)
    return ws


@pytest.fixture(scope="module", autouse=True)
def no_background_jobs_left(workspace):
    """A page test that opens Clusters starts a detached analysis job; stop whatever a test
    module left running, so it neither competes with later tests for the CPU nor outlives
    the suite."""
    yield
    from h2a.analysis.background import LIVE, force_stop, list_jobs

    for job in list_jobs():
        if job.status().get("status") not in LIVE:
            continue
        proc = job.process()
        force_stop(job)
        deadline = time.monotonic() + 20
        while proc is not None and proc.verified() and time.monotonic() < deadline:
            time.sleep(0.2)
        # gone, not 'stopped': the next module that asks for the same job starts it afresh
        shutil.rmtree(job.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_dir(workspace) -> Path:
    """A small synthetic dataset, the same one the app's demo choice uses in tests."""
    from h2a.data.demo import ensure_demo

    return ensure_demo()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for modules of many tiny convolutions: on a busy 2-core box,
    OpenMP threads spinning against other processes make them ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not present at {path}")
    return path


@pytest.fixture(scope="session")
def thumbs_dir() -> Path:
    return _need(THUMBS)


@pytest.fixture(scope="session")
def fullres_dir() -> Path:
    return _need(FULLRES)


@pytest.fixture(scope="session")
def labels_dir() -> Path:
    return _need(LABELS)


def open_page(page: str):
    """AppTest of the app switched to ``page``, as a user reaches it; fails on an exception."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return settle(at)


def settle(at, timeout: float = 600):
    """Wait for the evaluations a page started in the background (Evaluation, Sex), then
    rerun it, as the page's own poll would: tests see the filled-in page."""
    from h2a.app.runs_ui import _evaluations

    assert not at.exception, [e.value for e in at.exception]
    for _ in range(5):
        jobs = list(_evaluations().jobs.values())
        if not jobs:
            break
        for job in jobs:
            job.future.result(timeout=timeout)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m h2a`` as a user would, in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "h2a", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(demo_dir, workspace) -> Path:
    """A small finished bone-age run (tiny_cnn, 64 px) on the demo data, shared by tests."""
    from h2a.data.preprocess import PreprocessConfig
    from h2a.engine.config import TrainConfig
    from h2a.engine.trainer import train

    out = workspace / "models" / "tiny-boneage"
    if not (out / "metadata.json").exists():
        cfg = TrainConfig(data=str(demo_dir), out=str(out), arch="tiny_cnn", pretrained=False,
                          preprocess=PreprocessConfig(size=64).to_dict(), epochs=12, batch_size=32,
                          lr=3e-3, workers=0, seed=0, amp="off")  # float32 on every CPU, as on CI's
        train(cfg, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def app_url(workspace, demo_dir, tiny_run) -> str:
    """One `streamlit run` of the app for every browser test (a finished run already on disk)."""
    from tests.browser import CHROMIUM, app_server

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (bash scripts/setup.sh --browser)")
    with app_server(workspace / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="session")
def browser(app_url):
    from tests.browser import chromium

    with chromium() as b:
        yield b
